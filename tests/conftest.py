"""Test setup. Nothing touches CUDA at import time.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported, so it is set here, at collection, when no CUDA device is visible.

Tests marked `gpu` exercise the GPU when there is one (`make gpu-check` runs `-m gpu`). HOVLE_TEST_THREADS sets
torch's threads per test process (gpu-check: 16 cores shared by its workers); HOVLE_TB_NOW=1 prints each failure's
traceback the moment it happens (a run killed at its time limit keeps them).
"""

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


@pytest.fixture(scope="module")
def make_engine(tmp_path_factory):
    """The tests' one engine factory: make_engine(name, variant="hovle", checkpoint={...}, **options) writes the tiny
    checkpoint `name` (hovle.default_model.cases.make_checkpoint, `checkpoint` its config overrides) once per module
    and loads it (on the CPU in fp32 unless options say otherwise). Every engine it made is closed when the module
    ends."""
    from hovle import Engine
    from hovle.default_model.cases import make_checkpoint

    root, made = tmp_path_factory.mktemp("engines"), []

    def make(name: str = "pre", variant: str = "hovle", checkpoint: dict | None = None, **options):
        options = {"device": "cpu", "dtype": torch.float32, **options}
        made.append(Engine.from_pretrained(make_checkpoint(root, name, variant, **(checkpoint or {})), **options))
        return made[-1]

    make.root = root
    yield make
    for engine in made:
        engine.close()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny tokenizer's files, trained once per module (the InternLM2 layout, added tokens at the top)."""
    from hovle.default_model.tokenizer_trainer import write_tokenizer_files

    path = tmp_path_factory.mktemp("tokenizer") / "tiny"
    write_tokenizer_files(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    from hovle.loaders.tokenizer import Tokenizer

    return Tokenizer.from_dir(tok_dir)


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


# A tiny random InternLM-XComposer2-4KHD in the released layout (bf16 pickle shards, real config schema), written once
# per test session, and an fp32 CPU engine on it per module.
@pytest.fixture(scope="session")
def xc_path(tmp_path_factory):
    from hovle.default_model.xcomposer import write_xcomposer_model

    return write_xcomposer_model(tmp_path_factory.mktemp("xcomposer") / "xc-tiny")


@pytest.fixture(scope="module")
def xc_engine(xc_path):
    from hovle import Engine

    engine = Engine.from_pretrained(xc_path, device="cpu", dtype=torch.float32, max_context=8192)
    yield engine
    engine.close()
