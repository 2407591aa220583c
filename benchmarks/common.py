"""Shared benchmark harness: timing, the device's measured peaks, and result rows with provenance.

Every row carries the device name, torch/triton versions, git commit and date, and the choices the engine's
autoselect made so far (which implementation was timed), and is appended to benchmarks/results/<file>.jsonl (or to
the folder HOVLE_RESULTS names: gpu_check sends a run's rows straight to $OUT). Speeds are reported as GB/s or
TFLOP/s plus the fraction of the peak measured in the same run (device-to-device copy bandwidth, bf16 matmul
rate), never as bare milliseconds alone.

The rehearsal (HOVLE_REHEARSE=1, set by `gpu_check.py --rehearse`) runs the same benchmark code on the CPU: tiny
shapes, fp32, Triton through its interpreter, wall-clock timing, no torch.compile. Its rows say `rehearsal: true`
and measure nothing worth keeping; they prove that the GPU run's code paths work before GPU time is spent.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("HOVLE_RESULTS") or ROOT / "benchmarks" / "results")
sys.path.insert(0, str(ROOT))


def rehearsing() -> bool:
    return os.environ.get("HOVLE_REHEARSE", "0") == "1"


def bench_device() -> str:
    """Where the benchmarks run: the GPU, or the CPU in the rehearsal."""
    return "cpu" if rehearsing() else "cuda"


def bench_dtype() -> torch.dtype:
    """The benchmarks' activation dtype: bf16 on the GPU, fp32 in the rehearsal."""
    return torch.float32 if rehearsing() else torch.bfloat16


def sizes(real, tiny):
    """The real (model) shapes on the GPU, tiny ones in the rehearsal."""
    return tiny if rehearsing() else real


def git_commit() -> str:
    """The short commit of the code that runs (HOVLE_COMMIT overrides it: a copy of the tree whose .git is stale)."""
    if os.environ.get("HOVLE_COMMIT"):
        return os.environ["HOVLE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # result files written by earlier benchmarks of the same run do not make the code "dirty"
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def provenance() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from hovle.kernels import autoselect

    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not rehearsing() else "cpu"
    out = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if autoselect.summary():
        out["choices"] = autoselect.summary()
    if rehearsing():
        out["rehearsal"] = True
    return out


def cpu_ms(fn, rep: int = 3) -> float:
    """Median wall-clock milliseconds of fn() on the CPU (the rehearsal's timer), after one warm-up call."""
    fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_ms(fn, warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds of fn() on the GPU (CUDA events via triton.testing.do_bench), warm-up excluded.
    Includes the host's launch time: right for prefill-sized work, wrong for microsecond kernels."""
    if rehearsing():
        return cpu_ms(fn)
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def device_ms(fn, rep: int = 100) -> tuple[float, str]:
    """(median milliseconds, "cudagraph") of fn() replayed from a CUDA graph: device time without launch
    overhead, what a captured decode step pays. Falls back to (bench_ms, "eager") for providers that cannot be
    captured (host syncs), and says so in the row."""
    if rehearsing():
        return cpu_ms(fn), "cpu-rehearsal"
    from triton.testing import do_bench_cudagraph

    fn()  # compile / autotune outside the capture
    try:
        return float(do_bench_cudagraph(fn, rep=rep, return_mode="median")), "cudagraph"
    except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside fn
        print(f"not capturable ({type(exc).__name__}: {str(exc)[:120]}); timed eagerly", file=sys.stderr)
        torch.cuda.synchronize()
        return bench_ms(fn), "eager"


def no_gpu(name: str) -> bool:
    """True, and says so, where there is no CUDA device (and no rehearsal): a kernel benchmark then returns no
    rows."""
    if torch.cuda.is_available() or rehearsing():
        return False
    print(f"{name}: no CUDA device, nothing to time", file=sys.stderr)
    return True


def decode_tok_s_total(results) -> float:
    """A batch's decode rate over all its sequences: their decode tokens over the longest decode time."""
    return sum(r.timings.decode_tokens for r in results) / max(r.timings.decode_s for r in results)


def time_providers(op: str, shape: str, dtype, providers: dict, args: tuple, **row_extra) -> list[dict]:
    """One row per provider (name -> fn, or name -> (fn, args of its own)) that runs: the device time of its call
    (CUDA-graph replay where it can be captured), with bytes or flops in row_extra for the rates."""
    rows = []
    for name, entry in providers.items():
        fn, fn_args = entry if isinstance(entry, tuple) else (entry, args)
        if fn is None:
            continue
        try:
            ms, timing = device_ms(lambda fn=fn, a=fn_args: fn(*a))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory or a compile failure: report and go on
            print(f"{op} {shape}: {name} skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        rows.append(row(op, shape, dtype, name, ms, timing=timing, **row_extra))
    return rows


def attention_inputs(rows: int, batch: int, ctx: int, heads: tuple[int, int, int], page: int, dtype):
    """q (rows, Hq, D) as the strided view of a fused qkv output (how the engine passes it), dense (B, Hkv, S, D)
    keys and values for the library providers, and the same values in the engine's shuffled pages with their
    tables: (q, (dense_k, dense_v), (k_pages, v_pages, tables))."""
    hq, hkv, d = heads
    qkv = torch.randn(rows, (hq + 2 * hkv) * d, device=bench_device(), dtype=dtype)
    q = qkv[:, : hq * d].view(rows, hq, d)
    dense_k = torch.randn(batch, hkv, ctx, d, device=bench_device(), dtype=dtype)
    dense_v = torch.randn_like(dense_k)
    k_pages, tables = paged(dense_k, page)
    return q, (dense_k, dense_v), (k_pages, paged(dense_v, page)[0], tables)


def paged(dense: torch.Tensor, page: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Hkv, S, D) caches -> the engine's paged layout: (B * S/page, Hkv, page, D) pages in shuffled order and
    (B, S/page) int32 page tables (S a multiple of page). Same values, as the kernels see them in the engine."""
    b, h, s, d = dense.shape
    n = s // page
    pages = dense.reshape(b, h, n, page, d).transpose(1, 2).reshape(b * n, h, page, d)  # (B n, Hkv, P, D)
    order = torch.randperm(b * n, generator=torch.Generator().manual_seed(seed)).to(dense.device)
    shuffled = torch.empty_like(pages)
    shuffled[order] = pages
    return shuffled, order.view(b, n).to(torch.int32)


_PEAKS: dict[str, float] = {}


def measured_peaks() -> dict[str, float]:
    """Device-to-device copy bandwidth (GB/s, bytes read + written) and dense bf16 matmul rate (TFLOP/s); in the
    rehearsal, the CPU's (fp32, small)."""
    if not _PEAKS and rehearsing():
        src = torch.empty(1 << 25, dtype=torch.uint8)
        dst = torch.empty_like(src)
        _PEAKS["copy_gbps"] = 2 * src.numel() / cpu_ms(lambda: dst.copy_(src)) / 1e6
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        _PEAKS["bf16_tflops"] = 2 * 256**3 / cpu_ms(lambda: a @ b) / 1e9
    if not _PEAKS:
        n = 1 << 30  # 1 GiB each way: far beyond L2
        src = torch.empty(n, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src), warmup=5, rep=40)
        _PEAKS["copy_gbps"] = 2 * n / ms / 1e6
        del src, dst
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        ms = bench_ms(lambda: a @ b, warmup=5, rep=40)
        _PEAKS["bf16_tflops"] = 2 * 8192**3 / ms / 1e9
    return dict(_PEAKS)


def row(
    op: str,
    shape: str,
    dtype: torch.dtype | str,
    provider: str,
    ms: float,
    *,
    nbytes: float | None = None,
    flops: float | None = None,
    **extra,
) -> dict:
    """A result row; gbps/tflops and peak_frac come from bytes or flops moved per call."""
    peaks = measured_peaks()
    r = {"op": op, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "provider": provider, "ms": ms}
    if nbytes is not None:
        r["gbps"] = nbytes / ms / 1e6
        r["peak_frac"] = r["gbps"] / peaks["copy_gbps"]
    if flops is not None:
        r["tflops"] = flops / ms / 1e9
        r["peak_frac"] = r["tflops"] / peaks["bf16_tflops"]
    r.update(peaks)
    r.update(extra)
    r.update(provenance())
    if _STREAM:  # run_kernels --record: every row lands in its file the moment it is measured
        append_rows([r], _STREAM[0])
    return r


_STREAM: list[str] = []


def stream_rows(file: str) -> None:
    """From now on every row() is appended to `file` under RESULTS as it is made (a time-out keeps it)."""
    _STREAM[:] = [file]


def append_rows(rows: list[dict], file: str = "kernels.jsonl") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / file, "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)


def compiled(fn):
    """torch.compile of a reference function, or None where compile is unavailable or disabled (a provider
    called "torch-compile" must really be compiled, not dynamo's eager fallback)."""
    if rehearsing():
        print(
            "the rehearsal runs no torch.compile (minutes of CPU compilation): no torch-compile provider",
            file=sys.stderr,
        )
        return None
    if os.environ.get("TORCHDYNAMO_DISABLE", "0") == "1" or torch._dynamo.config.disable:
        print("torch.compile is disabled here (TORCHDYNAMO_DISABLE): no torch-compile provider", file=sys.stderr)
        return None
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - compile support varies by platform; report and skip
        print(f"torch.compile unavailable: {exc}", file=sys.stderr)
        return None


def kernel_script(run, doc: str) -> None:
    """The command line of a bench_<op>.py: its rows printed, or with --record appended to kernels.jsonl."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--record", action="store_true", help="append the rows to benchmarks/results/kernels.jsonl")
    args = p.parse_args()
    rows = run()
    if args.record:
        append_rows(rows)
    else:
        print("\n".join(json.dumps(r) for r in rows))
