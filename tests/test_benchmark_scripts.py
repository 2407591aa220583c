"""The benchmark scripts keep working: they import and run without a GPU (the kernel benchmarks return no rows,
bench_e2e --smoke runs every scenario and provider on the CPU with the tiny model and writes nothing)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_kernels import OPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op", OPS)
def test_kernel_benchmark_imports_and_needs_a_gpu(op):
    import torch

    module = importlib.import_module(f"benchmarks.bench_{op}")
    if not torch.cuda.is_available():
        assert module.run() == []


def _results_state() -> dict:
    results = ROOT / "benchmarks" / "results"
    return {p.name: p.stat().st_mtime_ns for p in results.iterdir()} if results.is_dir() else {}


def test_e2e_benchmark_smoke_run_covers_every_provider():
    before = _results_state()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_e2e.py"), "--smoke", "--models", "hovle-hd"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    providers = {r["provider"] for r in rows}
    assert providers == {"engine-torch-eager", "hf-reference-sdpa", "hf-reference-static-compile"}
    scenarios = {(r["provider"], r["scenario"]) for r in rows}
    assert all((p, s) in scenarios for p in providers for s in ("ttft_text", "ttft_one_tile", "ttft_max12", "decode"))
    assert _results_state() == before  # a smoke run records nothing


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check would run for minutes")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0 and "no CUDA GPU here" in out.stdout
