"""Test setup. Nothing touches CUDA at import time.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported, so it is set here, at collection, when no CUDA device is visible.

Tests marked `gpu` exercise the GPU when there is one (`make gpu-check` runs `-m gpu`). HOVLE_TEST_THREADS sets
torch's threads per test process (gpu-check: 16 cores shared by its workers); HOVLE_TB_NOW=1 prints each failure's
traceback the moment it happens (a run killed at its time limit keeps them).
"""

import dataclasses
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Every engine allocation that may be read before it is written (KV pages, decode-row state) starts as NaN /
# out-of-range integers in the tests (hovle/runtime/memory.py), so such a read fails a test instead of passing by
# luck of the allocator.
os.environ["HOVLE_POISON"] = "1"
# One tuning config per tiled Triton kernel in the engine-level tests (each config is a compile on a GPU); the kernel
# tests check every config's correctness on their own (test_every_tuning_config).
os.environ.setdefault("HOVLE_TRITON_AUTOTUNE", "0")
# A default-sized KV cache takes at most 2 GiB in the tests (hovle/runtime/sizing.py), not 90% of a GPU: several
# test processes share one GPU, and each engine of a test sizes itself from what the others left.
os.environ.setdefault("HOVLE_KV_CACHE_CAP", str(2 << 30))
if os.environ.get("HOVLE_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["HOVLE_TEST_THREADS"]))


def pytest_runtest_logreport(report):
    """HOVLE_TB_NOW=1: a failure's traceback goes to stderr at once (with xdist, from the controller)."""
    if report.failed and os.environ.get("HOVLE_TB_NOW") == "1":
        sys.stderr.write(f"\n===== FAILED {report.nodeid} ({report.when}) =====\n{report.longreprtext}\n")
        sys.stderr.flush()


def kernel_device() -> str:
    """Where Triton kernel tests run: the GPU when there is one, else the CPU through the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def selected_logits(monkeypatch):
    """Records the logits every token is selected from (prefill's first token, then each decode step), one row per
    running sequence."""
    from hovle.runtime.runner import ModelRunner

    seen, real = [], ModelRunner.select

    def spy(self, logits, rows, *args):
        seen.append(logits.clone())
        return real(self, logits, rows, *args)

    monkeypatch.setattr(ModelRunner, "select", spy)
    return seen


def assert_parting_is_a_near_tie(engine, req, want: list[int], got: list[int], bound: float, other=None) -> None:
    """Two greedy runs of one request (`want` from `engine`, `got` from another path) may part only at a near tie:
    where `engine`'s logits after the common prefix have their top two within `bound` (with `other`, the other
    path's engine, the bound adds twice the two engines' logit difference there: their error at that very step)
    and `got`'s token is one of them. After the first parting the runs see different contexts: not compared."""
    if want == got:
        return
    step = next(i for i, (a, b) in enumerate(zip(want + [-1], got + [-2])) if a != b)
    fed = want[:step]
    at = dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed)
    logits = engine.prompt_logits(at)[-1].cpu()
    if other is not None:
        bound += 2 * float((other.prompt_logits(at)[-1].cpu() - logits).abs().max())
    top2 = logits.topk(2).values
    margin = float(top2[0] - top2[1])
    assert margin < bound, f"{req.ids_llm[-8:]}: parted at step {step} with top-2 margin {margin:.3g} >= {bound:.3g}"
    if step < len(got):
        gap = float(logits.max() - logits[got[step]])
        assert gap < bound, f"step {step}: token {got[step]} is {gap:.3g} below the best (bound {bound:.3g})"
