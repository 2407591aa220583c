"""Prefix caching: requests that start with the same tokens and images share KV pages of both stacks.

A second question about the same image, or the next turn of a chat, prefills only what it does not share (whole
pages; HoVLE-HD recomputes the embedding rows of a shared image tile only when an LLM token still needs them), with
the same tokens and first-token logits as a cold run. Nothing is shared across other pixels (same token ids) or
past max_position_embeddings with dynamic-NTK RoPE.
"""

import pytest
import torch

from hovle import Engine
from hovle.default_model.cases import make_checkpoint, noise_image
from hovle.runtime.runner import ModelRunner

DYNAMIC = {"rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 100}
PAGE = 16


@pytest.fixture
def first_logits(monkeypatch):
    """The logits each request's first token was selected from."""
    seen, real = [], ModelRunner.first_tokens

    def spy(self, logits, *args):
        seen.append(logits.clone())
        return real(self, logits, *args)

    monkeypatch.setattr(ModelRunner, "first_tokens", spy)
    return seen


def _engine(path, **kw):
    return Engine.from_pretrained(path, device="cpu", dtype=torch.float32, kv_page_size=PAGE, **kw)


def _two_turns(engine, image, second_image=None):
    first = [{"role": "user", "content": "<image>\nWhat is this?"}]
    a = engine.chat(first, image, max_num=3, max_new_tokens=10)
    turn2 = first + [{"role": "assistant", "content": a.text or "it"}, {"role": "user", "content": "And colours?"}]
    return engine.chat(turn2, second_image or image, max_num=3, max_new_tokens=16)


@pytest.mark.parametrize("variant", ["hovle", "hovle-hd"])
def test_second_turn_reuses_the_prefix_and_matches_a_cold_run(tmp_path, first_logits, variant):
    path = make_checkpoint(tmp_path, variant, variant)
    image = noise_image(150, 70, 1)
    warm = _engine(path)
    reused = _two_turns(warm, image)
    cold = _two_turns(_engine(path, prefix_caching=False), image)
    assert cold.cached_tokens == 0 and reused.prompt_tokens == cold.prompt_tokens
    assert reused.cached_tokens >= reused.prompt_tokens - 2 * PAGE - 20  # all but the new turn and a page
    computed = _first_turn_prompt(warm) + reused.prompt_tokens - reused.cached_tokens
    assert warm.stats()["prefill_tokens"] == computed  # the second turn computed only what it did not share
    assert reused.token_ids == cold.token_ids
    warm_logits, cold_logits = first_logits[1], first_logits[3]
    assert float((warm_logits - cold_logits).abs().max() / cold_logits.abs().max()) < 1e-5


def _first_turn_prompt(engine) -> int:
    return len(
        engine.prepare([{"role": "user", "content": "<image>\nWhat is this?"}], [noise_image(150, 70, 1)], 3).ids_llm
    )


@pytest.mark.parametrize("variant", ["hovle", "hovle-hd"])
def test_second_question_about_an_image_prefills_only_its_new_tokens(tmp_path, variant):
    path = make_checkpoint(tmp_path, variant, variant)
    eng, image = _engine(path), noise_image(160, 60, 3)
    eng.generate("What colour is the sky?", image, max_num=4, max_new_tokens=2)
    before = eng.stats()["prefill_tokens"]
    second = eng.generate("How many trees are there?", image, max_num=4, max_new_tokens=2)
    cold = _engine(path, prefix_caching=False).generate("How many trees are there?", image, max_num=4, max_new_tokens=2)
    computed = eng.stats()["prefill_tokens"] - before
    assert computed == second.prompt_tokens - second.cached_tokens < 2 * PAGE + 12  # the question and a page
    assert second.token_ids == cold.token_ids


def test_no_reuse_across_other_pixels_or_past_dynamic_ntk_max_pos(tmp_path):
    eng = _engine(make_checkpoint(tmp_path, "pre"))
    a = eng.generate("Describe.", noise_image(150, 70, 1), max_num=3, max_new_tokens=2)
    b = eng.generate("Describe.", noise_image(150, 70, 2), max_num=3, max_new_tokens=2)  # same ids, other pixels
    req_a = eng.prepare([{"role": "user", "content": "Describe."}], [noise_image(150, 70, 1)], 3)
    first_image_token = req_a.spans_llm[0][0]
    assert b.prompt_tokens == a.prompt_tokens and b.cached_tokens <= first_image_token  # only text before the image
    ntk = _engine(make_checkpoint(tmp_path, "ntk", emb_rope=DYNAMIC, llm_rope=DYNAMIC), max_context=4096)
    ntk.generate("Describe.", noise_image(150, 70, 1), max_num=3, max_new_tokens=2)
    again = ntk.generate("Describe.", noise_image(150, 70, 1), max_num=3, max_new_tokens=2)
    assert again.prompt_tokens > DYNAMIC["max_position_embeddings"] and again.cached_tokens == 0


@pytest.mark.gpu
def test_prefix_reuse_on_the_triton_backend(tmp_path):
    """The Triton attention kernel's cached-prefix path through shared pages (interpreter on the CPU)."""
    from hovle.kernels._triton import HAS_TRITON, triton_usable

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (HAS_TRITON and triton_usable(device)):
        pytest.skip("Triton cannot run here")
    path = make_checkpoint(tmp_path, "pre")
    image = noise_image(150, 70, 1)
    eng = Engine.from_pretrained(path, device=device, dtype=torch.float32, backend="triton", kv_page_size=PAGE)
    reused = _two_turns(eng, image)
    full = _two_turns(_engine(path, prefix_caching=False), image)
    assert reused.cached_tokens > 0 and reused.token_ids == full.token_ids
