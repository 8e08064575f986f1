"""Loss parity of parallel layouts against one process, on whatever backend the machine has.

    python benchmarks/device/parallel_parity.py --out DIR                  # GPUs: NCCL, one rank per GPU
    python benchmarks/device/parallel_parity.py --layouts one dp2 --out DIR  # CPU: gloo

The runs are tests/test_parallel.py's (same configs, corpus and worker: a vanilla and a SepLLM model,
fp32, global batch 8, 5 steps); each layout is one launch of that worker. Prints the losses of each
layout beside the one-process losses with the largest absolute difference, writes DIR/parity.md
and DIR/parity.json, and exits 1 when a layout differs by more than --tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import test_parallel as runs  # noqa: E402  (the configs and worker the CPU tests use)


def compare(layouts: list[str], folder: Path) -> list[dict]:
    """Rows of every layout against one process; each layout's rows are printed as soon as it has run,
    so a run cut short by a time limit still reports the layouts it finished."""
    corpus = runs.build_corpus(folder)
    results = {}
    rows = []
    for layout in ["one", *layouts]:
        configs = [runs.write_config(folder, f"{layout}_{model}", corpus, model, layout) for model in runs.MODELS]
        print(f"launching {layout} ({runs.LAYOUTS[layout][0]} processes)", flush=True)
        results[layout] = dict(zip(runs.MODELS, runs.launch(folder, runs.LAYOUTS[layout][0], configs)))
        for model in runs.MODELS if layout != "one" else ():
            want, got = results["one"][model], results[layout][model]
            diffs = [abs(a - b) for a, b in zip(got["losses"], want["losses"])] + [abs(got["valid"] - want["valid"])]
            rows.append({"layout": layout, "model": model, "losses": got["losses"], "reference": want["losses"],
                         "valid": got["valid"], "reference_valid": want["valid"], "max_abs_diff": max(diffs)})
            print(f"{layout} {model}: losses {got['losses']} vs {want['losses']}, max abs diff {max(diffs):.2e}", flush=True)
    return rows


def markdown(rows: list[dict], backend: str, tolerance: float) -> str:
    lines = [f"Backend {backend}; fp32; {runs.STEPS} steps, global batch 8; tolerance {tolerance:g} (abs)", "",
             "| layout | model | step | 1 process | layout | abs diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        for step, (want, got) in enumerate(zip(r["reference"], r["losses"]), start=1):
            lines.append(f"| {r['layout']} | {r['model']} | {step} | {want:.6f} | {got:.6f} | {abs(got - want):.2e} |")
        lines.append(f"| {r['layout']} | {r['model']} | valid | {r['reference_valid']:.6f} | {r['valid']:.6f} | "
                     f"{abs(r['valid'] - r['reference_valid']):.2e} |")
    lines += ["", "| layout | model | max abs diff | within tolerance |", "|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['model']} | {r['max_abs_diff']:.2e} | {'yes' if r['max_abs_diff'] <= tolerance else 'NO'} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpus = torch.cuda.device_count()
    default = ["tp2", "pp2", "dp2", *(["tp2pp2"] if gpus >= 4 else [])]
    parser.add_argument("--layouts", nargs="+", default=default, choices=[k for k in runs.LAYOUTS if k != "one"])
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest absolute loss difference accepted (fp32; the CPU tests use 2e-5)")
    parser.add_argument("--out", type=Path, default=None)
    cli = parser.parse_args(argv)
    need = max(runs.LAYOUTS[name][0] for name in cli.layouts)
    if 0 < gpus < need:
        parser.error(f"layouts {cli.layouts} need {need} GPUs; this machine has {gpus}")
    backend = f"nccl on {gpus} x {torch.cuda.get_device_name(0)}" if gpus else "gloo on CPU"
    with tempfile.TemporaryDirectory(prefix="parity_") as tmp:
        rows = compare(cli.layouts, Path(tmp))
    text = markdown(rows, backend, cli.tolerance)
    print(text, flush=True)
    if cli.out:
        cli.out.mkdir(parents=True, exist_ok=True)
        (cli.out / "parity.md").write_text(text)
        (cli.out / "parity.json").write_text(json.dumps({"backend": backend, "tolerance": cli.tolerance, "rows": rows}, indent=1))
    bad = [f"{r['layout']}/{r['model']}" for r in rows if r["max_abs_diff"] > cli.tolerance]
    if bad:
        print(f"parity FAILED for {', '.join(bad)}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
