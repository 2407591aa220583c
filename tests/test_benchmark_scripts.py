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
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_e2e.py"), "--smoke", "--models", "hovle-hd"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
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
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "no CUDA GPU here" in out.stdout


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_gpu_check_rehearsal_runs_every_step_and_leaves_its_results_in_out(tmp_path):
    """`make gpu-check REHEARSE=1`: the GPU run's script on the CPU, end to end. Every step runs in its box and exits
    0, the rows of each benchmark land in --out as they are measured (marked as a rehearsal), the log holds every
    step, and no more files are left than the device machine sends back; benchmarks/results/ is untouched."""
    from benchmarks.gpu_check import MAX_FILES

    before = _results_state()
    out = subprocess.run(
        # twice the rehearsal's own budget: the suite's other workers share the CPU
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--rehearse",
            "--budget",
            "400",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "gpu-check.log").read_text()
    for name in ("build", "gpu tests", "full-size check", "e2e", "kernels", "serve"):
        assert f"| {name} | 0 |" in log, f"step {name!r} did not run to exit 0:\n{log[-3000:]}"
    assert " passed" in log and "FAILED" not in log  # the test step's pytest output is in the log
    e2e, kernels, serve = (_rows(tmp_path / f) for f in ("e2e.jsonl", "kernels.jsonl", "serve.jsonl"))
    assert {r["provider"] for r in e2e} >= {"engine-torch-eager", "hf-reference-sdpa", "hf-reference-static-compile"}
    assert {r["op"] for r in kernels} == {
        "rms_norm",
        "swiglu",
        "norm_linear",
        "rotary",
        "kv_store",
        "attention",
        "decode_attention",
        "patch_embed",
        "pixel_shuffle",
        "sample",
        "encoder_attention",
        "layer_norm",
        "gelu",
    }
    assert len(serve) == 2 and all(r["lost"] == 0 for r in serve)
    assert all(r.get("rehearsal") is True and r["commit"] for r in e2e + kernels + serve)
    files = [p for p in tmp_path.iterdir()]
    assert len(files) <= MAX_FILES and all(p.is_file() for p in files), [p.name for p in files]
    assert _results_state() == before


def test_gpu_check_rehearsal_of_xcomposer(tmp_path):
    """`make gpu-check FAMILY=xcomposer REHEARSE=1`: its build, GPU tests and benchmark steps run to exit 0, the
    benchmark's rows (engine and reference) land in --out as measured, benchmarks/results/ untouched."""
    before = _results_state()
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--family", "xcomposer", "--rehearse"]
        + ["--budget", "400", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "gpu-check.log").read_text()
    for name in ("build", "gpu tests", "xcomposer bench"):
        assert f"| {name} | 0 |" in log, f"step {name!r} did not run to exit 0:\n{log[-3000:]}"
    rows = _rows(tmp_path / "e2e.jsonl")
    assert {r["provider"] for r in rows} == {"engine-torch", "hf-reference-sdpa"}
    assert {r["scenario"] for r in rows} >= {"ttft_hd1", "ttft_hd6", "decode"}
    assert all(r.get("rehearsal") is True and r["model"] == "xcomposer2-4khd" for r in rows)
    assert _results_state() == before


def test_every_row_carries_the_choices_autoselect_made():
    """A benchmark row says which implementation the engine had chosen (and which candidates failed, and why)."""
    from benchmarks.common import provenance
    from hovle.kernels.autoselect import Choice

    choice = Choice(
        "row_test",
        {"slow": lambda: 1, "fast": lambda: 2, "broken": lambda: 1 / 0},
        timer=lambda fn: {1: 2.0, 2: 1.0}[fn()],
    )
    choice.pick(("shape", 7), (), {}, measurable=True)
    prov = provenance()
    assert prov["choices"]["row_test"] == {"('shape', 7)": "fast"}
    assert prov["choices"]["row_test failed"] == {"('shape', 7)": "broken: ZeroDivisionError: division by zero"}


SCRIPTS = sorted(
    p.name
    for p in (ROOT / "benchmarks").glob("*.py")
    if p.name not in {"__init__.py", "common.py", "e2e_common.py", "e2e_reference.py"}
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_answers_help_and_writes_nothing(script):
    """`--help` prints the script's usage and exits 0 (it does not start the benchmark); nothing is recorded."""
    before = _results_state()
    readme = (ROOT / "README.md").read_text()
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
    assert _results_state() == before and (ROOT / "README.md").read_text() == readme


def test_report_without_write_prints_the_section_and_leaves_the_readme():
    readme = (ROOT / "README.md").read_text()
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<!-- results:start -->" in out.stdout or "_Generated by" in out.stdout
    assert (ROOT / "README.md").read_text() == readme
    assert "already says this" in out.stderr  # the committed README is what the committed results generate
