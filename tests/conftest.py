"""Test setup. Nothing touches CUDA at import time.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported, so it is set here, at collection, when no CUDA device is visible.
"""

import os

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
