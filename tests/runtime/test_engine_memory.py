"""An engine's device memory is its own and goes back when it is done: close() frees the KV caches at once,
dropping an engine frees everything without waiting for the garbage collector (no reference cycle keeps it), and
a default-sized cache respects HOVLE_KV_CACHE_CAP (how the tests keep parallel engines on one GPU small)."""

import gc
import weakref

import pytest
import torch

from hovle import Engine, InputError
from hovle.default_model.folder import ensure_default_model


@pytest.fixture
def no_gc():
    """The garbage collector off: whatever is freed is freed by reference counting alone."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _cache_bytes(engine: Engine) -> int:
    caches = engine.runner.caches
    return sum(t.numel() * t.element_size() for c in caches for t in (c.k, c.v))


def test_close_frees_the_kv_caches_at_once(no_gc):
    engine = Engine.from_pretrained(ensure_default_model("hovle"), device="cpu")
    assert engine.generate("What colour is the house?", max_new_tokens=2).finish_reason in ("stop", "length")
    caches = [weakref.ref(t) for c in engine.runner.caches for t in (c.k, c.v)]
    engine.close()
    assert all(ref() is None for ref in caches)
    assert engine.stats()["requests_finished"] == 1  # the counters stay readable


def test_a_dropped_engine_is_freed_without_the_garbage_collector(no_gc):
    engine = Engine.from_pretrained(ensure_default_model("hovle"), device="cpu")
    engine.generate("How many trees are there?", max_new_tokens=2)
    runner, model = weakref.ref(engine.runner), weakref.ref(engine.model)
    del engine
    assert runner() is None and model() is None  # a runner <-> decode-step cycle kept both alive


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_close_gives_the_gpu_memory_back(no_gc):
    """On a GPU with graphs: after close() the caches, graphs and state are gone from torch's allocated memory (the
    weights stay until the engine object goes), so the next engine sizes itself from all of it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    engine = Engine.from_pretrained(ensure_default_model("hovle"), device="cuda", cuda_graphs=True)
    engine.generate("What colour is the house?", max_new_tokens=4)
    cache = _cache_bytes(engine)
    engine.close()
    torch.cuda.synchronize()
    left = torch.cuda.memory_allocated() - before
    assert left < cache // 2, f"{left} bytes still allocated after close (the cache was {cache})"


def test_the_test_cap_bounds_a_default_cache(monkeypatch):
    path = ensure_default_model("hovle")
    monkeypatch.delenv("HOVLE_KV_CACHE_CAP", raising=False)
    with Engine.from_pretrained(path, device="cpu") as engine:
        uncapped = _cache_bytes(engine)
    monkeypatch.setenv("HOVLE_KV_CACHE_CAP", str(uncapped // 8))
    with Engine.from_pretrained(path, device="cpu") as engine:
        assert _cache_bytes(engine) <= uncapped // 8 + 2 * engine.runner.page_size * 4096  # + the scratch pages
    monkeypatch.setenv("HOVLE_KV_CACHE_CAP", str(1 << 30))
    with Engine.from_pretrained(path, device="cpu", kv_cache_memory=uncapped // 4) as engine:
        assert _cache_bytes(engine) > uncapped // 8  # an explicit kv_cache_memory is the caller's: not capped


@pytest.mark.parametrize(
    "env, kwargs, match",
    [("lots", {}, "HOVLE_KV_CACHE_CAP = 'lots'"), (None, {"max_batch": 513}, "at most 512 sequences")],
)
def test_bad_memory_settings_fail_before_loading(monkeypatch, tmp_path, env, kwargs, match):
    if env is not None:
        monkeypatch.setenv("HOVLE_KV_CACHE_CAP", env)
    with pytest.raises(InputError, match=match):
        Engine.from_pretrained(tmp_path / "no-such-model", device="cpu", dtype=torch.float32, **kwargs)
