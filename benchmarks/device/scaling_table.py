"""Per-GPU throughput of multi-GPU runs against the one-GPU run of the same shape.

    python benchmarks/device/scaling_table.py --reference 1gpu.json --runs "data 2=dp2.json" "tensor 2=tp2.json" \
        --out DIR

Each JSON is what benchmarks/train_throughput.py --json writes. Rows are matched on model, sequence
length and implementation; the ratio is (tokens/s / GPUs) of the run over the one-GPU run's tokens/s,
beside the issue's targets (data parallel >= 0.90, tensor parallel 2 >= 0.80).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGETS = {"data": 0.90, "tensor": 0.80}


def load(path: str) -> dict:
    data = json.loads(Path(path).read_text())
    return {(r["model"], r["seq"], r["impl"]): r for r in data["rows"]}, data["meta"]


def table(reference: str, runs: list[tuple[str, str]]) -> tuple[str, list[dict]]:
    ref_rows, ref_meta = load(reference)
    out = []
    for label, path in runs:
        rows, meta = load(path)
        for key, row in rows.items():
            base = ref_rows.get(key)
            entry = {"run": label, "gpus": meta["gpus"], "model": key[0], "seq": key[1], "impl": key[2],
                     "micro_batch": row["micro_batch"], "error": row.get("error")}
            if "tokens_per_s" in row and base and "tokens_per_s" in base:
                per_gpu = row["tokens_per_s"] / meta["gpus"]
                entry.update(tokens_per_s=row["tokens_per_s"], per_gpu=per_gpu, one_gpu=base["tokens_per_s"],
                             ratio=per_gpu / base["tokens_per_s"], tflops_per_gpu=row["tflops_per_gpu"],
                             mfu_measured=row.get("mfu_measured"))
            out.append(entry)
    ceiling = ref_meta.get("ceiling_tflops")
    lines = [f"Device {ref_meta['device']}; one-GPU reference from {Path(reference).name}"
             + (f"; bf16 matmul ceiling {ceiling:.1f} TFLOP/s" if ceiling else ""), "",
             "| run | GPUs | model | seq | mb/GPU | impl | tokens/s | per GPU | 1 GPU | per-GPU ratio | target | TFLOP/s/GPU | MFU meas. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in out:
        target = TARGETS.get(e["run"].split()[0])
        head = f"| {e['run']} | {e['gpus']} | {e['model']} | {e['seq']} | {e['micro_batch']} | {e['impl']} |"
        if "ratio" not in e:
            lines.append(head + f" {e['error'] or 'no one-GPU row'} | | | | | | |")
            continue
        mfu = f"{e['mfu_measured']:.1%}" if e.get("mfu_measured") else "-"
        lines.append(head + f" {e['tokens_per_s']:.0f} | {e['per_gpu']:.0f} | {e['one_gpu']:.0f} | {e['ratio']:.3f} | "
                     f"{'>= %.2f' % target if target else '-'} | {e['tflops_per_gpu']:.1f} | {mfu} |")
    return "\n".join(lines) + "\n", out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="the one-GPU run's JSON")
    parser.add_argument("--runs", nargs="+", required=True, help='"LABEL=PATH"; LABEL starts with data or tensor')
    parser.add_argument("--out", type=Path, default=None)
    cli = parser.parse_args(argv)
    runs = []
    for spec in cli.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--runs takes LABEL=PATH, got {spec!r}")
        if Path(path).exists():
            runs.append((label, path))
        else:
            print(f"{label}: {path} is missing (that run failed or was cut short)", flush=True)
    if not Path(cli.reference).exists():
        print(f"the one-GPU reference {cli.reference} is missing: no ratios", flush=True)
        return 1
    text, rows = table(cli.reference, runs)
    print(text, flush=True)
    if cli.out:
        cli.out.mkdir(parents=True, exist_ok=True)
        (cli.out / "scaling.md").write_text(text)
        (cli.out / "scaling.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
