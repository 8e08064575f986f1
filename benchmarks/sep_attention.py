"""Sep-Attention kernel against the fastest full causal attention, forward + backward, one table per run.

    # here (needs ../shared): PG19 through the GPT-NeoX-20B tokenizer, saved for the GPU machine
    python benchmarks/sep_attention.py --prepare-tokens
    # on the GPU (carry .devcarry): the issue's settings plus i.i.d. separator patterns
    python benchmarks/sep_attention.py --out results_dir
    python benchmarks/sep_attention.py --rows 8192:128:16:16:2:256:pg19 --rows 2048:64:12:12:8:64:iid15
    python benchmarks/sep_attention.py --sweep        # block sizes of each kernel at two shapes
    python benchmarks/sep_attention.py --sweep --kinds fwd dq --rows 32768:128:16:16:1:256:pg19

Full attention: every SDPA backend (cuDNN, FlashAttention-2, memory-efficient) pinned in turn,
and FlashAttention-4 (`flash_attn.cute`, on [B, L, H, D] tensors, its native layout) where it is
installed (benchmarks/device/install_fa4.sh), the fastest kept. SepLLM time = kernel forward + backward + the per-batch cost (separator
detection, plan and kernel layout) divided by --layers, since one batch's layout serves all
layers. Times are medians of eager calls (Python launch cost included: at 2k tokens a standalone
call is bound by it, inside a model it overlaps other layers' GPU work) and of CUDA-graph replays
(GPU time only). Extra memory = peak during SepLLM forward + backward beyond inputs, output and gradients.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megatron.neox_arguments.sepllm import SEPARATOR_PRESETS, SepLLMArgs  # noqa: E402
from megatron.sepllm.mask import build_attention_plan, document_ids_from_eod, kept_ratios, separator_flags  # noqa: E402

TOKENS = REPO / ".devcarry" / "pg19_neox20b.npy"
SEPS = SEPARATOR_PRESETS["gpt-neox-20b"]
EOD = 0  # <|endoftext|> of the GPT-NeoX-20B tokenizer


@dataclass
class Row:
    L: int
    D: int
    H: int
    Hkv: int
    B: int
    n: int
    pattern: str  # pg19 | iid<percent> (e.g. iid15); suffix "+docs" adds documents of ~2k tokens

    @classmethod
    def parse(cls, text: str) -> "Row":
        parts = text.split(":")
        if len(parts) != 7:
            raise SystemExit(f"--rows wants L:D:H:Hkv:B:n:pattern, got {text!r}")
        return cls(*map(int, parts[:6]), parts[6])


DEFAULT_ROWS = [
    Row(2048, 64, 12, 12, 8, 64, "pg19"), Row(2048, 64, 12, 12, 8, 64, "iid5"),
    Row(2048, 64, 12, 12, 8, 64, "iid15"), Row(2048, 64, 12, 12, 8, 64, "iid30"),
    Row(8192, 64, 12, 12, 2, 256, "pg19"),
    Row(8192, 128, 16, 16, 2, 256, "pg19"), Row(8192, 128, 16, 16, 2, 256, "iid5"),
    Row(8192, 128, 16, 16, 2, 256, "iid15"), Row(8192, 128, 16, 16, 2, 256, "iid30"),
    Row(32768, 128, 16, 16, 1, 256, "pg19"), Row(32768, 128, 16, 16, 1, 256, "iid5"),
    Row(32768, 128, 16, 16, 1, 256, "iid15"), Row(32768, 128, 16, 16, 1, 256, "iid30"),
    Row(131072, 128, 8, 8, 1, 256, "pg19"), Row(131072, 128, 8, 8, 1, 256, "iid15"),
    # grouped-query attention, documents, and dense masks (wide windows)
    Row(8192, 128, 32, 8, 1, 256, "pg19"), Row(8192, 128, 16, 16, 2, 256, "pg19+docs"),
    Row(2048, 64, 12, 12, 8, 512, "pg19"), Row(2048, 64, 12, 12, 8, 1024, "iid30"),
    Row(8192, 128, 16, 16, 2, 2048, "pg19"), Row(8192, 128, 16, 16, 2, 4096, "iid30"),
]


def prepare_tokens(num_tokens: int) -> None:
    from tokenizers import Tokenizer

    shared = REPO.parent / "shared"
    if not shared.exists():
        shared = REPO / "shared"
    tok = Tokenizer.from_file(str(shared / "data/tokenizers/gpt-neox-20b-tokenizer.json"))
    ids: list[int] = []
    for book in sorted((shared / "data/pg19-test").glob("*.txt")):
        ids += tok.encode(book.read_text(encoding="utf-8")).ids + [EOD]
        if len(ids) >= num_tokens:
            break
    arr = np.asarray(ids[:num_tokens], dtype=np.uint16)
    TOKENS.parent.mkdir(exist_ok=True)
    tmp = TOKENS.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, TOKENS)
    print(f"{len(arr)} tokens -> {TOKENS} (separator rate {np.isin(arr, SEPS).mean():.3f})")


def make_ids(row: Row, seed: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    pattern, docs = row.pattern.split("+")[0], row.pattern.endswith("+docs")
    g = torch.Generator().manual_seed(seed)
    if pattern == "pg19":
        if not TOKENS.exists():
            raise SystemExit(f"{TOKENS} is missing: run --prepare-tokens where ../shared exists, and carry .devcarry")
        stream = torch.from_numpy(np.load(TOKENS).astype(np.int64))
        need = row.B * row.L
        if need > len(stream):
            raise SystemExit(f"{need} tokens needed, {len(stream)} prepared: rerun --prepare-tokens with more")
        start = int(torch.randint(0, len(stream) - need + 1, (1,), generator=g))
        ids = stream[start : start + need].view(row.B, row.L).clone()
        ids[ids == EOD] = 1  # documents only where asked for
    elif pattern.startswith("iid"):
        rate = float(pattern[3:]) / 100
        ids = torch.randint(100, 50000, (row.B, row.L), generator=g)
        is_sep = torch.rand(row.B, row.L, generator=g) < rate
        seps = torch.tensor(SEPS)[torch.randint(0, len(SEPS), (row.B, row.L), generator=g)]
        ids = torch.where(is_sep, seps, ids)
    else:
        raise SystemExit(f"unknown pattern {row.pattern!r}: pg19 or iid<percent>, optionally +docs")
    doc_ids = None
    if docs:
        eod = torch.rand(row.B, row.L, generator=g) < 1 / 2048
        ids = torch.where(eod, torch.full_like(ids, EOD), ids)
        doc_ids = document_ids_from_eod(ids, EOD).to(device)
    return ids.to(device), doc_ids


def _warm(spec: dict) -> str:
    """Compile one kernel variant in a worker process; Triton's disk cache hands it to the parent.

    Compile keys depend on head dim, dtype, documents/padding and block config, not on the
    sizes (those are not specialized on), so a small problem compiles what a big one runs.
    """
    from megatron.sepllm.kernel import configs as C
    from megatron.sepllm.kernel import ops, plan_layout

    device = torch.device("cuda")
    D, kind = spec["D"], spec["kind"]
    if spec.get("configs"):
        apply_configs(Path(spec["configs"]))
    row = Row(1024, D, 2, 2, 1, 64, "iid15" + ("+docs" if spec.get("docs") else ""))
    try:
        ids, doc_ids = make_ids(row, 0, device)
        plan = build_attention_plan(ids, SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=64), 1,
                                    doc_ids=doc_ids)
        layout = plan_layout(plan, 0, device)
        q, k, v, do = (torch.randn(1, 2, 1024, D, device=device, dtype=torch.bfloat16) for _ in range(4))
        cfg = C.BlockConfig(*spec["cfg"]) if spec.get("cfg") else None
        scale = 1.0 / math.sqrt(D)
        out, lse = ops.launch_forward(q, k, v, layout, 64, scale, cfg if kind == C.FWD else None)
        if kind != C.FWD:
            _, delta = ops.launch_dq(do, q, k, v, out, lse, layout, 64, scale, cfg if kind == C.DQ else None)
            if kind in (C.DKDV, C.DKDV_FAR):
                dk, dv = ops.launch_dkdv_band(do, q, k, v, lse, delta, layout, 64, scale, cfg if kind == C.DKDV else None)
                ops.launch_dkdv_far(do, q, k, v, lse, delta, layout, 64, scale, dk, dv, cfg if kind == C.DKDV_FAR else None)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        return f"{spec}: {str(exc).splitlines()[0][:200]}"
    return ""


def precompile(specs: list[dict], jobs: int) -> None:
    """Compile kernel variants in parallel processes (Triton compiles on one CPU core each)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if jobs <= 1 or not torch.cuda.is_available() or not specs:
        return
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(jobs, len(specs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        for err in pool.map(_warm, specs):
            if err:
                print(f"  precompile failed: {err}", flush=True)
    print(f"precompiled {len(specs)} variants in {time.perf_counter() - t:.0f} s with {jobs} processes", flush=True)


def timer(fn) -> float:
    """Median milliseconds of fn (device events on CUDA; wall clock elsewhere)."""
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def graph_timer(fn) -> float:
    """Median ms of fn replayed from a CUDA graph: GPU time without Python launch overhead."""
    if not torch.cuda.is_available():
        return float("nan")
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))
    except Exception as exc:  # noqa: BLE001 - reported, the eager number still stands
        print(f"  graph timing failed: {str(exc).splitlines()[0][:150]}", flush=True)
        return float("nan")


def full_attention(q, k, v, dout) -> tuple[str, float]:
    """Fastest SDPA backend for causal forward + backward: (name, ms)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = q.shape[1] != k.shape[1]
    backends = (
        [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash2", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
        if q.is_cuda else [("math", SDPBackend.MATH)]
    )
    best = ("none", float("inf"), None)
    fa4 = _fa4_step(q, k, v, dout)
    if fa4 is not None:
        try:
            ms = timer(fa4)
            print(f"  full fa4: {ms:.3f} ms", flush=True)
            best = ("fa4", ms, fa4)
        except Exception as exc:  # noqa: BLE001 - a failing optional baseline is reported, not fatal
            print(f"  fa4: unavailable ({str(exc).splitlines()[0][:150]})", flush=True)
    for name, backend in backends:
        def step(backend=backend):
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            torch.autograd.grad(out, (q, k, v), dout)
        try:
            ms = timer(step)
        except RuntimeError as exc:  # backend does not support this shape (e.g. GQA on cuDNN)
            print(f"  {name}: unavailable ({str(exc).splitlines()[0][:100]})", flush=True)
            continue
        print(f"  full {name}: {ms:.3f} ms", flush=True)
        if ms < best[1]:
            best = (name, ms, step)
    return best


def _fa4_step(q, k, v, dout):
    """Causal forward + backward through FlashAttention-4, or None where it is not installed."""
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] < 9:
        return None
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        return None
    qs, ks, vs = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    ds = dout.transpose(1, 2).contiguous()

    def step():
        out = flash_attn_func(qs, ks, vs, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out, (qs, ks, vs), ds)
    return step


def _fa4_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flash-attn-4")
    except PackageNotFoundError:
        return "not installed"


def bench_row(row: Row, layers: int, device, seed: int = 0) -> dict:
    from megatron.sepllm.kernel import plan_layout, sep_attention_kernel
    from megatron.sepllm.kernel.testing import spot_check_rows

    ids, doc_ids = make_ids(row, seed, device)
    cfg = SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=row.n)
    plan = build_attention_plan(ids, cfg, 1, doc_ids=doc_ids)
    density = kept_ratios(plan)["attn_map_ratio"]
    sep_rate = float(separator_flags(ids, SEPS).float().mean())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(row.B, row.H, row.L, row.D, device=device, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(row.B, row.Hkv, row.L, row.D, device=device, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(row.B, row.Hkv, row.L, row.D, device=device, dtype=dtype, generator=g).requires_grad_()
    dout = torch.randn(row.B, row.H, row.L, row.D, device=device, dtype=dtype, generator=g)
    print(f"{row}: separators {sep_rate:.3f}, density {density:.3f}", flush=True)

    full_name, full_ms, full_step = full_attention(q, k, v, dout)
    full_graph_ms = graph_timer(full_step)

    def per_batch():
        p = build_attention_plan(ids, cfg, 1, doc_ids=doc_ids)
        plan_layout(p, 0, device)

    batch_ms = timer(per_batch)

    def sep_step():
        out = sep_attention_kernel(q, k, v, plan, 0)
        torch.autograd.grad(out, (q, k, v), dout)

    sep_step()  # compile and build the layout outside the timing
    kernel_ms = timer(sep_step)
    kernel_graph_ms = graph_timer(sep_step)

    extra_mib = float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = sep_attention_kernel(q, k, v, plan, 0)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        torch.cuda.synchronize()
        produced = sum(t.numel() * t.element_size() for t in (out, *grads))
        extra_mib = (torch.cuda.max_memory_allocated() - base - produced) / 2**20
        del out, grads
    qkv_mib = sum(t.numel() * t.element_size() for t in (q, k, v)) / 2**20

    with torch.no_grad():
        out = sep_attention_kernel(q, k, v, plan, 0)
        L = row.L
        rows = torch.unique(torch.cat([torch.arange(0, min(64, L)), torch.arange(L // 2, min(L // 2 + 64, L)),
                                       torch.arange(max(L - 64, 0), L)])).to(device)
        err = spot_check_rows(out, q, k, v, plan, 0, rows, 1.0 / math.sqrt(row.D))

    sep_ms = kernel_ms + batch_ms / layers
    sep_graph_ms = kernel_graph_ms + batch_ms / layers
    result = dict(asdict(row), sep_rate=sep_rate, density=density, full_backend=full_name, full_ms=full_ms,
                  kernel_ms=kernel_ms, per_batch_ms=batch_ms, sep_ms=sep_ms, speedup=full_ms / sep_ms,
                  full_graph_ms=full_graph_ms, sep_graph_ms=sep_graph_ms, speedup_graph=full_graph_ms / sep_graph_ms,
                  extra_mib=extra_mib, extra_pct=100 * extra_mib / qkv_mib, spot_err=err)
    print(f"  sepllm {sep_ms:.3f} ms (kernel {kernel_ms:.3f} + per-batch {batch_ms:.3f}/{layers}) "
          f"speedup {result['speedup']:.2f}x (graphs: {full_graph_ms:.3f} vs {sep_graph_ms:.3f} ms, "
          f"{result['speedup_graph']:.2f}x), extra {extra_mib:.1f} MiB, spot err {err:.2e}", flush=True)
    return result


def table(results: list[dict], layers: int) -> str:
    head = ("| L | D | H/Hkv | B | n | pattern | seps | density | full backend | full ms | SepLLM ms | "
            f"per-batch ms (/{layers}) | speedup | full ms (graph) | SepLLM ms (graph) | speedup (graph) | "
            "extra MiB (% qkv) | spot err |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['L']} | {r['D']} | {r['H']}/{r['Hkv']} | {r['B']} | {r['n']} | {r['pattern']} | {r['sep_rate']:.3f} | "
            f"{r['density']:.3f} | {r['full_backend']} | {r['full_ms']:.3f} | {r['sep_ms']:.3f} | {r['per_batch_ms']:.3f} | "
            f"{r['speedup']:.2f}x | {r['full_graph_ms']:.3f} | {r['sep_graph_ms']:.3f} | {r['speedup_graph']:.2f}x | "
            f"{r['extra_mib']:.1f} ({r['extra_pct']:.1f}%) | {r['spot_err']:.1e} |"
        )
    return "\n".join(lines)


SWEEP_ROWS = [Row(2048, 64, 12, 12, 8, 64, "pg19"), Row(8192, 128, 16, 16, 2, 256, "pg19")]


def sweep(device, jobs: int, best_path: Path | None = None, precompile_only: bool = False,
          rows: list[Row] | None = None, kinds: list[str] | None = None) -> str:
    """Time every candidate block config of each kernel (default: at the 2k/64 and 8k/128 settings).

    best_configs.json gets the fastest config per kernel and head dim at the shortest row of that head dim.
    """
    from megatron.sepllm.kernel import configs as C
    from megatron.sepllm.kernel import ops
    from megatron.sepllm.kernel import plan_layout

    rows = rows or SWEEP_ROWS
    kinds = kinds or list(C.CANDIDATES)
    precompile([dict(D=D, kind=kind, cfg=tuple(asdict(c).values())) for D in sorted({r.D for r in rows})
                for kind in kinds for c in C.CANDIDATES[kind]], jobs)
    if precompile_only:
        return ""
    lines = ["| shape | kernel | block_m | block_n | warps | stages | ms |", "|---|---|---|---|---|---|---|"]
    best: dict = {}
    first_of_dim = {}
    for row in sorted(rows, key=lambda r: r.L):
        first_of_dim.setdefault(row.D, row)
    for row in rows:
        ids, _ = make_ids(row, 0, device)
        plan = build_attention_plan(ids, SepLLMArgs(separator_token_ids="gpt-neox-20b", prefill_local_window_size=row.n), 1)
        layout = plan_layout(plan, 0, device)
        W, scale = row.n, 1.0 / math.sqrt(row.D)
        q = torch.randn(row.B, row.H, row.L, row.D, device=device, dtype=torch.bfloat16)
        k, v = torch.randn_like(q), torch.randn_like(q)
        do = torch.randn_like(q)
        out, lse = ops.launch_forward(q, k, v, layout, W, scale)
        _, delta = ops.launch_dq(do, q, k, v, out, lse, layout, W, scale)
        dk, dv = ops.launch_dkdv_band(do, q, k, v, lse, delta, layout, W, scale)
        runs = {
            C.FWD: lambda c: ops.launch_forward(q, k, v, layout, W, scale, c),
            C.DQ: lambda c: ops.launch_dq(do, q, k, v, out, lse, layout, W, scale, c),
            C.DKDV: lambda c: ops.launch_dkdv_band(do, q, k, v, lse, delta, layout, W, scale, c),
            # adds into the same dk, dv on every call: harmless for timing
            C.DKDV_FAR: lambda c: ops.launch_dkdv_far(do, q, k, v, lse, delta, layout, W, scale, dk, dv, c),
        }
        for kind, fn in runs.items():
            if kind not in kinds:
                continue
            for cfg in C.CANDIDATES[kind]:
                try:
                    ms = timer(lambda: fn(cfg))
                except Exception as exc:  # noqa: BLE001 - a tile shape that does not compile is a result too
                    ms = float("nan")
                    print(f"  {kind} {cfg}: {str(exc).splitlines()[0][:120]}", flush=True)
                shape = f"L{row.L} D{row.D} H{row.H} B{row.B} n{row.n}"
                lines.append(f"| {shape} | {kind} | {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} | {cfg.num_stages} | {ms:.3f} |")
                print(lines[-1], flush=True)
                if first_of_dim[row.D] is row and ms == ms and ms < best.get((kind, row.D), (None, float("inf")))[1]:
                    best[(kind, row.D)] = (asdict(cfg), ms)
    if best_path is not None:
        best_path.write_text(json.dumps([dict(kind=k, D=d, cfg=c, ms=ms) for (k, d), (c, ms) in best.items()], indent=1))
    return "\n".join(lines)


def apply_configs(path: Path) -> None:
    from megatron.sepllm.kernel.configs import load_overrides

    for item in load_overrides(path):
        print(f"config override {item['kind']} D{item['D']}: {item['cfg']}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare-tokens", action="store_true", help="tokenize PG19 into .devcarry/ and exit")
    ap.add_argument("--num-tokens", type=int, default=600_000)
    ap.add_argument("--rows", action="append", help="L:D:H:Hkv:B:n:pattern (repeatable); default: the issue's set")
    ap.add_argument("--layers", type=int, default=12, help="layers sharing one batch's plan and layout")
    ap.add_argument("--sweep", action="store_true", help="time the block-size candidates of each kernel (at --rows if given)")
    ap.add_argument("--kinds", nargs="+", choices=["fwd", "dq", "dkdv", "dkdv_far"], help="kernels to --sweep (default: all)")
    ap.add_argument("--out", type=Path, help="directory for results.json and table.md")
    ap.add_argument("--configs", type=Path, help="best_configs.json of a --sweep run to use instead of the defaults")
    ap.add_argument("--precompile-only", action="store_true", help="only compile the kernel variants a run needs")
    ap.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="parallel compile processes")
    args = ap.parse_args(argv)

    if args.prepare_tokens:
        prepare_tokens(args.num_tokens)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, flash-attn-4 {_fa4_version()}", flush=True)
    if args.sweep:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        text = sweep(device, args.jobs, args.out / "best_configs.json" if args.out else None, args.precompile_only,
                     [Row.parse(r) for r in args.rows] if args.rows else None, args.kinds)
        print(text)
        if args.out:
            (args.out / "sweep.md").write_text(text + "\n")
        return
    if args.configs:
        apply_configs(args.configs)
    rows = [Row.parse(r) for r in args.rows] if args.rows else DEFAULT_ROWS
    precompile([dict(D=D, docs=docs, kind=kind, configs=str(args.configs) if args.configs else None)
                for D, docs in sorted({(r.D, r.pattern.endswith("+docs")) for r in rows})
                for kind in ("fwd", "dq", "dkdv", "dkdv_far")], args.jobs)
    if args.precompile_only:
        return
    results = []
    for row in rows:
        try:
            results.append(bench_row(row, args.layers, device))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{row}: out of memory ({exc})", flush=True)
        torch.cuda.empty_cache() if device.type == "cuda" else None
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args.layers)
    print(text)
    if args.out:
        (args.out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
