"""`make gpu-check`: everything the GPU can tell us, in one time-boxed run on the GPU machine.

Uses that machine's own python3 (torch, triton, transformers, pytest-xdist preinstalled; no internet, no virtual
environment, nothing downloaded). Steps, each a subprocess with its own time box so the whole run ends within the
budget (--budget seconds, 470 by default: under 8 minutes on an H200; --quick: 230), and each step's rows written
to benchmarks/results/ as they are produced, so a time-out loses only the step in flight:

  1. build csrc in place (native + CUDA image preprocessing)                      [the full-size checkpoint
  2. the GPU tests in parallel (pytest-xdist): kernels at model shape in bf16,      is written meanwhile, in
     graphs vs eager, Triton engine vs reference, bf16 end to end, native CUDA       the background]
     preprocessing, the trained model's bf16 answers
  3. the end-to-end benchmark on the full-size checkpoint (both models; engine with graphs and eager, the HF
     reference with DynamicCache and with StaticCache + torch.compile; batches 1/8/64; 128 new tokens)
  4. the kernel benchmarks (CUDA-graph device time at decode shapes)
  5. the serving benchmark, when the serving extra imports (its wheels travel in .whl/)

A summary table is printed at the end, every log and result file is copied to $OUT when that is set. Without a
GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CKPT = Path(os.environ.get("HOVLE_FULL_DIR", "/tmp/hovle-full"))
GPU_TESTS = ["tests/test_kernel_attention.py", "tests/test_kernel_decode_attention.py", "tests/test_kernel_kv_store.py",
             "tests/test_kernel_rms_norm.py", "tests/test_kernel_rotary.py", "tests/test_kernel_swiglu.py",
             "tests/test_kernel_patch_embed.py", "tests/test_kernel_pixel_shuffle.py", "tests/test_kernel_sample.py",
             "tests/test_kernel_norm_linear.py", "tests/test_autoselect.py", "tests/test_engine.py",
             "tests/test_engine_triton.py", "tests/test_capture_safety.py",
             "tests/test_gpu_e2e.py", "tests/test_native_preprocess.py", "tests/test_prefix_reuse.py",
             "tests/test_flash_attn_backend.py", "tests/test_trained_model_gpu.py"]  # fmt: skip
QUICK_TESTS = ["tests/test_gpu_e2e.py", "tests/test_engine.py::test_cuda_graph_decode_equals_eager",
               "tests/test_kernel_kv_store.py", "tests/test_kernel_decode_attention.py",
               "tests/test_trained_model_gpu.py"]  # fmt: skip


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def step(name: str, cmd: list[str], limit: float, log: Path, env: dict | None = None) -> tuple[str, int, float]:
    """Runs one step under `timeout` (its output appended to `log`); returns (name, status, seconds)."""
    if limit < 10:
        print(f"== {name}: skipped, {limit:.0f} s left", flush=True)
        return name, -1, 0.0
    print(f"== {name} (at most {limit:.0f} s): {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n== {name}: {' '.join(cmd)}\n")
        fh.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        rc = subprocess.call(["timeout", "-k", "5", str(int(limit)), *cmd], cwd=ROOT, stdout=fh,
                             stderr=subprocess.STDOUT, env=env)  # fmt: skip
    took = time.monotonic() - t0
    print(f"   {name}: exit {rc} after {took:.0f} s", flush=True)
    return name, rc, took


def _serving_importable() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "openai", "prometheus_client"))


def _summary(steps: list[tuple[str, int, float]], since: float) -> None:
    print("\n| step | exit | seconds |\n|---|---|---|")
    for name, rc, took in steps:
        print(f"| {name} | {'timeout' if rc in (124, 137) else rc} | {took:.0f} |")
    for file in ("e2e.jsonl", "kernels.jsonl", "serve.jsonl"):
        path = RESULTS / file
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            new = [r for r in rows if r.get("date", "") >= since]
            print(f"{file}: {len(new)} new rows")
            for r in new:
                if r.get("scenario") in ("decode", "ttft_max12") or r.get("op") == "serve":
                    keys = ("model", "provider", "scenario", "batch", "decode_tok_s", "decode_tok_s_total", "ttft_ms",
                            "bw_frac", "concurrency", "output_tok_per_s", "ttft_p50_ms")  # fmt: skip
                    print("  " + ", ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                                           for k in keys if r.get(k) is not None))  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset in under 4 minutes")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; this check needs one (nothing run)")
        return 0
    clock = Clock(args.budget or (230 if args.quick else 470))
    from datetime import datetime, timezone

    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"gpu-check-{since[:10]}.log"
    py = sys.executable
    ckpt_log = open(RESULTS / "gpu-check-ckpt.log", "a")  # noqa: SIM115 - the background writer's log
    ckpt = subprocess.Popen([py, "benchmarks/e2e_common.py", "--write", str(CKPT)], cwd=ROOT, stdout=ckpt_log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    subprocess.call(["nvidia-smi"], stdout=open(log, "a"), stderr=subprocess.STDOUT)
    steps = [step("build", [py, "setup.py", "-q", "build_ext", "--inplace"], min(90, clock.left()), log,
                  {"HOVLE_BUILD_CUDA": "1"})]  # fmt: skip
    tests = QUICK_TESTS if args.quick else GPU_TESTS
    tests = [t for t in tests if (ROOT / t.split("::")[0]).is_file()]
    steps.append(step("gpu tests", [py, "-m", "pytest", "-q", "-n", "8", "-p", "no:cacheprovider", "--timeout", "150",
                                    *tests], min(100 if args.quick else 170, clock.left() - 100), log,
                      {"HOVLE_FULL_CKPT": ""}))  # fmt: skip
    try:
        ckpt.wait(timeout=max(1, clock.left() - 60))
    except subprocess.TimeoutExpired:  # the steps that need it fail on their own; the summary and $OUT copy still run
        ckpt.kill()
        print("== full-size checkpoint: not written in time (see gpu-check-ckpt.log)", flush=True)
    e2e = ["--models", "hovle", "--batches", "1,64", "--providers", "graphs,hf-static"] if args.quick else \
          ["--batches", "1,8,64", "--new-tokens", "128"]  # fmt: skip
    e2e_time = min(90 if args.quick else 170, clock.left() - (5 if args.quick else 70))
    steps.append(step("e2e", [py, "benchmarks/bench_e2e.py", "--dir", str(CKPT), "--deadline", str(int(e2e_time - 40)),
                              *e2e], e2e_time, log))  # fmt: skip
    if not args.quick:
        steps.append(step("kernels", [py, "benchmarks/run_kernels.py"], min(60, clock.left() - 25), log))
        if _serving_importable():
            steps.append(step("serve", [py, "benchmarks/bench_serve.py", "--model", str(CKPT / "hovle"),
                                        "--concurrency", "1,16,64", "--requests", "64", "--record"],
                              clock.left() - 5, log))  # fmt: skip
        else:
            print("== serve: skipped (fastapi, uvicorn or openai not importable: carry their wheels in .whl/)")
    _summary(steps, since)
    if os.environ.get("OUT"):
        for f in RESULTS.iterdir():
            if f.suffix in (".jsonl", ".log") and f.stat().st_mtime >= clock.start - 5:
                shutil.copy(f, os.environ["OUT"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
