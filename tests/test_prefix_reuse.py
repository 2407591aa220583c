"""Multi-turn chat reuses the cached prefix: the same tokens and logits as a full prefill, fewer tokens prefilled."""

import pytest
import torch

from engine import Engine
from engine.model import HoVLEModel
from tests.ckpt import make_checkpoint, noise_image

DYNAMIC = {"rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 100}


@pytest.fixture
def prefill_spy(monkeypatch):
    """Records (tokens prefilled, last logits) of every prefill."""
    calls, real = [], HoVLEModel.prefill

    def spy(self, items, *args, **kwargs):
        out = real(self, items, *args, **kwargs)
        calls.append((sum(len(it.ids_llm) for it in items), out[-1].clone()))
        return out

    monkeypatch.setattr(HoVLEModel, "prefill", spy)
    return calls


def _two_turns(engine, image, second_image=None):
    first = [{"role": "user", "content": "<image>\nWhat is this?"}]
    a = engine.chat(first, image, max_num=3, max_new_tokens=10)
    turn2 = first + [{"role": "assistant", "content": a.text}, {"role": "user", "content": "And the colours?"}]
    return engine.chat(turn2, second_image or image, max_num=3, max_new_tokens=16)


@pytest.mark.parametrize("variant", ["hovle", "hovle-hd"])
def test_second_turn_reuses_the_prefix_and_matches_a_full_prefill(tmp_path, prefill_spy, variant):
    path = make_checkpoint(tmp_path, variant, variant)
    image = noise_image(150, 70, 1)
    reused = _two_turns(Engine.from_pretrained(path, device="cpu", dtype=torch.float32), image)
    (_, _), (n_reused, logits_reused) = prefill_spy[-2], prefill_spy[-1]
    fresh = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    fresh.reuse_prefix = False
    full = _two_turns(fresh, image)
    n_full, logits_full = prefill_spy[-1]
    assert n_reused < 40 < n_full == full.prompt_tokens  # only the new turn was prefilled
    assert reused.token_ids == full.token_ids and reused.prompt_tokens == full.prompt_tokens
    assert float((logits_reused - logits_full).abs().max() / logits_full.abs().max()) < 1e-5


def test_no_reuse_with_different_images_dynamic_ntk_or_after_a_batch(tmp_path, prefill_spy):
    eng = Engine.from_pretrained(make_checkpoint(tmp_path, "pre"), device="cpu", dtype=torch.float32)
    _two_turns(eng, noise_image(150, 70, 1), second_image=noise_image(150, 70, 2))
    assert prefill_spy[-1][0] > 40  # same token ids, other pixels: full prefill
    eng.generate(["a", "b"], max_new_tokens=2)
    eng.generate("a", max_new_tokens=2)
    assert prefill_spy[-1][0] > 40  # the batch overwrote slot 0

    ntk = make_checkpoint(tmp_path, "ntk", emb_rope=DYNAMIC, llm_rope=DYNAMIC)
    eng = Engine.from_pretrained(ntk, device="cpu", dtype=torch.float32, max_context=4096)
    _two_turns(eng, noise_image(150, 70, 1))
    assert prefill_spy[-1][0] > DYNAMIC["max_position_embeddings"]  # past max_pos: cached keys carry old bases


def test_prefix_reuse_on_the_triton_backend(tmp_path, prefill_spy):
    """The Triton attention kernel's cached-prefix path, inside the engine (interpreter on the CPU)."""
    from kernels._triton import HAS_TRITON, triton_usable

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    path = make_checkpoint(tmp_path, "pre")
    image = noise_image(150, 70, 1)
    eng = Engine.from_pretrained(path, device=device, dtype=torch.float32, backend="triton")
    reused = _two_turns(eng, image)
    n_reused = prefill_spy[-1][0]
    full = _two_turns(Engine.from_pretrained(path, device="cpu", dtype=torch.float32, backend="torch"), image)
    assert n_reused < 40 and reused.token_ids == full.token_ids
