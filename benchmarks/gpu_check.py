"""`make gpu-check`: everything the GPU can tell us, in one time-boxed run on the GPU machine.

Uses that machine's own python3 (torch, triton, transformers, pytest-xdist preinstalled; no internet, no virtual
environment, nothing downloaded). Steps, each a subprocess with its own time box so the whole run ends within the
budget (--budget seconds: 480 by default, under 8 minutes on an H200; --quick: 230):

  1. build csrc in place (native + CUDA image preprocessing)                     [the full-size checkpoint is
  2. the GPU tests (`pytest -m gpu`, in parallel): kernels in bf16 at model       written meanwhile, in the
     shape, graphs vs eager, the Triton engine vs the reference, the native      background]
     CUDA preprocessing, the trained model's bf16 answers, memory freed by close
  3. the full-size check: the bf16 engine against the reference on the full-size checkpoint
  4. the end-to-end benchmark on the full-size checkpoint (both models; the engine with graphs and eager, the HF
     reference with DynamicCache and with StaticCache + torch.compile; batches 1/8/64; 128 new tokens)
  5. the kernel benchmarks (CUDA-graph device time at decode shapes)
  6. the serving benchmark, when the serving extra imports (its wheels travel in .whl/)

Every step writes into one log as it runs (failures' tracebacks the moment they happen), and every benchmark row
is appended to its results file the moment it is measured; with --out (or $OUT, as on the device machine) both go
straight there, so a run killed at its limit still leaves everything it measured, in at most 8 files. Without
--out they go to benchmarks/results/. A summary table ends the run. Without a GPU it says so and exits 0.

--rehearse runs the same script on the CPU (Triton's interpreter, tiny shapes and checkpoints, short boxes): every
step, log line and result file of the GPU run, so that the run's mechanics never fail first on the GPU.

--family xcomposer checks InternLM-XComposer2-4KHD instead, in its own budget (420 s): the build, its GPU tests
(tests/families/xcomposer), and benchmarks/bench_xcomposer.py (a full-size random checkpoint drawn on the GPU; TTFT
at hd_num 25 and 55, decode at batch 1 and 64, against the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8  # what comes back from the device machine's $OUT
QUICK_TESTS = [
    "tests/families/hovle/test_gpu_e2e.py",
    "tests/runtime/test_engine.py",
    "tests/runtime/test_engine_memory.py",
    "tests/kernels/test_kv_store.py",
    "tests/kernels/test_decode_attention.py",
    "tests/families/hovle/test_trained_model_gpu.py",
]
REHEARSAL_TESTS = ["tests/kernels/test_swiglu.py", "tests/kernels/test_rms_norm.py"]


class Plan:
    """What one run does: its time boxes, test selection, checkpoint and the environment of every step."""

    def __init__(self, args, out: Path):
        self.out, self.rehearse, self.quick, self.family = out, args.rehearse, args.quick, args.family
        self.budget = args.budget or (
            200 if args.rehearse else 230 if args.quick else 420 if self.family != "hovle" else 480
        )
        default = tempfile.mkdtemp(prefix="hovle-rehearsal-") if args.rehearse else "/tmp/hovle-full"
        self.ckpt = Path(os.environ.get("HOVLE_FULL_DIR") or default)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOVLE_RESULTS": str(out), "HOVLE_TB_NOW": "1"}
        if self.rehearse:
            self.env.update(HOVLE_REHEARSE="1", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        self.start = time.monotonic()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def box(self, gpu: tuple[float, float], rehearsal: tuple[float, float]) -> float:
        """A step's time box from (its share, the seconds later steps keep) on the GPU or in the rehearsal; a
        rehearsal given a larger --budget (a loaded CPU, e.g. beside the test suite) scales both."""
        share, keep = rehearsal if self.rehearse else gpu
        scale = self.budget / 200 if self.rehearse else 1.0
        return min(share * scale, self.left() - keep * scale)

    def tests(self) -> list[str]:
        """The test files to run with -m gpu: only modules that hold a gpu-marked test are even imported (the
        machine may lack what the others import, e.g. the serving extra)."""
        if self.rehearse:
            return REHEARSAL_TESTS
        if self.quick:
            return QUICK_TESTS
        return sorted(
            str(f.relative_to(ROOT))
            for f in (ROOT / "tests").rglob("test_*.py")
            if "pytest.mark.gpu" in f.read_text(encoding="utf-8")
        )


def step(name: str, cmd: list[str], limit: float, log: Path, env: dict) -> tuple[str, int, float]:
    """Runs one step under `timeout`, its output streamed into `log`; returns (name, status, seconds)."""
    if limit < 10:
        _say(log, f"== {name}: skipped, {limit:.0f} s left")
        return name, -1, 0.0
    _say(log, f"== {name} (at most {limit:.0f} s): {' '.join(cmd)}")
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as fh:
        rc = subprocess.call(
            ["timeout", "-k", "5", str(int(limit)), *cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    took = time.monotonic() - t0
    _say(log, f"   {name}: exit {rc} after {took:.0f} s")
    return name, rc, took


def _say(log: Path, line: str) -> None:
    """A line on the console and in the log."""
    print(line, flush=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def _serving_importable() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn", "openai", "prometheus_client"))


def run_xcomposer(plan: Plan, log: Path) -> list[tuple[str, int, float]]:
    """The XComposer2-4KHD run: build, its GPU tests, its benchmark (rows as they are measured)."""
    py, env = sys.executable, plan.env
    build_env = {**env, "HOVLE_BUILD_CUDA": "0" if plan.rehearse else "1"}
    steps = [
        step("build", [py, "setup.py", "-q", "build_ext", "--inplace"], plan.box((60, 300), (60, 60)), log, build_env)
    ]
    pytest = [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--timeout", "120", "-m", "gpu"]
    tests = [*pytest, "-n", "2" if plan.rehearse else "4", "tests/families/xcomposer"]
    tests += ["-k", "not ImageHere"] if plan.rehearse else []  # interpreted, the image case alone takes a minute
    steps.append(step("gpu tests", tests, plan.box((90, 220), (100, 50)), log, env))
    limit = plan.box((400, 5), (120, 0))
    bench = [py, "benchmarks/bench_xcomposer.py", "--record", "--deadline", str(int(limit - 40))]
    steps.append(step("xcomposer bench", bench + (["--smoke"] if plan.rehearse else []), limit, log, env))
    return steps


def run(plan: Plan, log: Path) -> list[tuple[str, int, float]]:
    if plan.family == "xcomposer":
        return run_xcomposer(plan, log)
    py, env = sys.executable, plan.env
    writer = [py, "benchmarks/e2e_common.py", "--write", str(plan.ckpt)] + (["--tiny"] if plan.rehearse else [])
    with open(plan.out / "ckpt.log", "a", encoding="utf-8") as ckpt_log:
        ckpt = subprocess.Popen(writer, cwd=ROOT, stdout=ckpt_log, stderr=subprocess.STDOUT, env=env)
    build_env = {**env, "HOVLE_BUILD_CUDA": "0" if plan.rehearse else "1"}
    build = [py, "setup.py", "-q", "build_ext", "--inplace"]
    steps = [step("build", build, plan.box((60, 400), (60, 120)), log, build_env)]
    workers, threads = ("2", "1") if plan.rehearse else ("8", "2")
    test_env = {**env, "HOVLE_TEST_THREADS": threads, "OMP_NUM_THREADS": threads}
    pytest = [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--timeout", "120"]
    tests = ["nice", "-n", "10", *pytest, "-n", workers, "-m", "gpu", *plan.tests()]  # the writer goes first
    steps.append(step("gpu tests", tests, plan.box((130, 300), (60, 90)), log, test_env))
    try:
        ckpt.wait(timeout=max(1.0, plan.left() - (80 if plan.rehearse else 280)))
    except subprocess.TimeoutExpired:  # the steps that need it fail on their own; the summary still comes
        ckpt.kill()
        _say(log, "== checkpoint: not written in time (see ckpt.log)")
    full_env = {**test_env, "HOVLE_FULL_CKPT": str(plan.ckpt)}
    steps.append(
        step(
            "full-size check",
            [*pytest, "tests/families/hovle/test_gpu_e2e.py"],
            plan.box((90, 240), (30, 80)),
            log,
            full_env,
        )
    )
    if plan.rehearse:
        e2e = ["--smoke", "--models", "hovle"]
    elif plan.quick:
        e2e = ["--models", "hovle", "--batches", "1,64", "--providers", "graphs,hf-static"]
    else:
        e2e = ["--batches", "1,8,64", "--new-tokens", "128", "--providers", "graphs,hf-static,eager,hf"]
    limit = plan.box((180, 5 if plan.quick else 60), (60, 50))
    e2e_cmd = [py, "benchmarks/bench_e2e.py", "--record", "--dir", str(plan.ckpt), "--deadline", str(int(limit - 30))]
    steps.append(step("e2e", [*e2e_cmd, *e2e], limit, log, env))
    if not plan.quick:
        # torch.compile providers off: compiling every reference takes minutes the run does not have. The
        # rehearsal's box is wider: 13 benchmarks through the CPU interpreter take 40-50 s on a shared 2-core machine
        kernels_env = {**env, "TORCHDYNAMO_DISABLE": "1"}
        steps.append(
            step(
                "kernels", [py, "benchmarks/run_kernels.py", "--record"], plan.box((60, 3), (60, 10)), log, kernels_env
            )
        )
        if _serving_importable():
            serve = (
                ["--concurrency", "1,2", "--requests", "4", "--max-tokens", "4"]
                if plan.rehearse
                else ["--concurrency", "1,16,64", "--requests", "64"]
            )
            steps.append(
                step(
                    "serve",
                    [py, "benchmarks/bench_serve.py", "--model", str(plan.ckpt / "hovle"), "--record", *serve],
                    plan.box((60, 3), (40, 0)),
                    log,
                    env,
                )
            )
        else:
            _say(log, "== serve: skipped (fastapi, uvicorn, openai or prometheus_client not importable: carry wheels)")
    if ckpt.poll() is None:
        ckpt.kill()
    return steps


def summary(steps: list[tuple[str, int, float]], out: Path, since: str, log: Path) -> None:
    lines = ["", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {'timeout' if rc in (124, 137) else rc} | {t:.0f} |" for n, rc, t in steps]
    for name in ("e2e.jsonl", "kernels.jsonl", "serve.jsonl"):
        path = out / name
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        new = [r for r in rows if r.get("date", "") >= since]
        lines.append(f"{name}: {len(new)} new rows")
        for r in new:
            if r.get("scenario") in ("decode", "ttft_max12") or r.get("op") == "serve":
                keys = (
                    "model",
                    "provider",
                    "scenario",
                    "batch",
                    "decode_tok_s",
                    "decode_tok_s_total",
                    "ttft_ms",
                    "bw_frac",
                    "concurrency",
                    "output_tok_per_s",
                    "ttft_p50_ms",
                )
                lines.append(
                    "  "
                    + ", ".join(
                        f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                        for k in keys
                        if r.get(k) is not None
                    )
                )
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    too_many = f"  MORE THAN {MAX_FILES}: some will not come back" if len(files) > MAX_FILES else ""
    lines.append(f"files in {out}: {len(files)} {files}{too_many}")
    for line in lines:
        _say(log, line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset in under 4 minutes")
    p.add_argument("--rehearse", action="store_true", help="the same run on the CPU: tiny shapes, short boxes")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--family", default="hovle", choices=("hovle", "xcomposer"), help="which model family to check")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="where the log and rows go (default: $OUT, else benchmarks/results/)",
    )
    args = p.parse_args()
    if not args.rehearse:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            print("gpu-check: no CUDA GPU here; this check needs one (nothing run; --rehearse runs it on the CPU)")
            return 0
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log = out / ("gpu-check.log" if args.out else f"gpu-check-{since[:10]}.log")
    plan = Plan(args, out)
    _say(log, f"# gpu-check {'rehearsal ' if plan.rehearse else ''}{since}, budget {plan.budget:.0f} s")
    if not plan.rehearse:
        with open(log, "a", encoding="utf-8") as fh:
            subprocess.call(["nvidia-smi"], stdout=fh, stderr=subprocess.STDOUT)
    steps = run(plan, log)
    summary(steps, out, since, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
