"""The engine against the independent reference (hovle/reference/model.py: transformers' Llama layers + plain torch).

fp32 on the CPU: prefill logits at every position within 1e-4 relative, and 32 greedy tokens identical, for
text-only prompts, one tile, several tiles with a thumbnail, two images, HoVLE-HD (both decode modes),
normalize_encoder_output, active dynamic NTK, linear scaling, GQA ratios 1 and 3 and head_dim 64. The prompt is
also prefilled in chunks of a few positions (HoVLE-HD: LLM tokens wait for their tiles) with the same logits.
"""

import pytest
import torch

from hovle import Engine
from hovle.default_model.cases import CASES, DYNAMIC_SMALL, make_checkpoint, noise_image
from hovle.reference.model import ReferenceHoVLE


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


def _setup(root, name, **options):
    variant, overrides, images, max_num, question = CASES[name]
    path = make_checkpoint(root, name, variant, **overrides)
    engine = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, max_context=4096, **options)
    pics = [noise_image(w, h, s) for w, h, s in images]
    return path, engine, pics, max_num, question


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_logits_and_greedy_tokens_match_reference(ckpt_root, name):
    path, engine, pics, max_num, question = _setup(ckpt_root, name)
    req = engine.prepare([{"role": "user", "content": question}], pics, max_num)
    ours = engine.prompt_logits(req)
    ref = ReferenceHoVLE.from_dir(str(path))
    theirs = ref.prefill(req.ids_emb, req.ids_llm, req.pixel_values)
    assert ours.shape == theirs.shape
    assert _rel_err(ours, theirs) < 1e-4, f"{name}: logits differ by {_rel_err(ours, theirs):.2e} relative"

    if name == "dynamic_ntk":  # the prompt alone must already be past max_position_embeddings
        assert len(req.ids_llm) > DYNAMIC_SMALL["max_position_embeddings"]
    result = engine.generate(question, pics, max_num=max_num, max_new_tokens=32)
    ref_tokens, _ = ReferenceHoVLE.from_dir(str(path)).greedy(
        req.ids_emb, req.ids_llm, req.pixel_values, 32, eos_id=engine.tokenizer.im_end_id
    )
    expected = ref_tokens[:-1] if ref_tokens[-1] == engine.tokenizer.im_end_id else ref_tokens
    assert result.token_ids == expected
    assert len(result.token_ids) == 32 or result.finish_reason == "stop"


def test_hd_reference_quirk_decode_matches_reference(ckpt_root):
    path, _, pics, max_num, question = _setup(ckpt_root, "hd")
    engine = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, hd_decode="reference-quirk")
    req = engine.prepare([{"role": "user", "content": question}], pics, max_num)
    result = engine.generate(question, pics, max_num=max_num, max_new_tokens=24)
    ref_tokens, _ = ReferenceHoVLE.from_dir(str(path)).greedy(
        req.ids_emb, req.ids_llm, req.pixel_values, 24, hd_decode="reference-quirk"
    )
    assert result.token_ids == ref_tokens[: len(result.token_ids)]
    natural = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    assert natural.generate(question, pics, max_num=max_num, max_new_tokens=24).token_ids != result.token_ids


def test_real_tile_geometry_hd_one_tile(ckpt_root):
    """448 px tiles / 14 px patches as released: 1024 embedding tokens and 256 LLM tokens per tile."""
    path = make_checkpoint(ckpt_root, "real_geometry_hd", "hovle-hd", image_size=448)
    engine = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    req = engine.prepare([{"role": "user", "content": "Describe."}], [noise_image(300, 280, 14)], 1)
    ctx = engine.tokenizer.img_context_id
    assert req.ids_emb.count(ctx) == 1024 and req.ids_llm.count(ctx) == 256
    ours = engine.prompt_logits(req)
    theirs = ReferenceHoVLE.from_dir(str(path)).prefill(req.ids_emb, req.ids_llm, req.pixel_values)
    assert _rel_err(ours, theirs) < 1e-4


@pytest.mark.parametrize("name, chunk", [("tiles_thumbnail", 7), ("hd", 5), ("hd_two_images", 37), ("dynamic_ntk", 9)])
def test_chunked_prefill_matches_reference(ckpt_root, name, chunk):
    """Prefill in chunks of a few embedding positions: HoVLE-HD LLM tokens wait for their tile; dynamic-NTK RoPE
    still rotates every chunk for the whole prompt's length."""
    path, engine, pics, max_num, question = _setup(ckpt_root, name, prefill_chunk=chunk)
    req = engine.prepare([{"role": "user", "content": question}], pics, max_num)
    assert len(req.ids_emb) > 4 * chunk
    theirs = ReferenceHoVLE.from_dir(str(path)).prefill(req.ids_emb, req.ids_llm, req.pixel_values)
    assert _rel_err(engine.prompt_logits(req), theirs) < 1e-4
