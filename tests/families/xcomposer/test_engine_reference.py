"""The engine against the independent reference (hovle/reference/xcomposer.py: transformers' CLIPVisionModel and
Llama layers with PLoRA written there, the authors' prompt string, HD transform and interleaving), fp32 on the CPU:
logits at every prompt position within 1e-4 relative and 32 greedy tokens identical, for text only, one crop, a 3x2
grid, a portrait image, two turns, and the other BOS placement; a batch of mixed prompts equals each alone, and a
run whose sequences are preempted (a KV cache too small for all of them) equals one that is not."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from hovle import Engine
from hovle.reference.xcomposer import chat_prompt, hd_transform, load_folder

STEPS = 32


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))


# name -> (messages, images, hd_num, the authors' query, history)
CASES = {
    "text": ([{"role": "user", "content": "Hello there, who are you?"}], [], 1, "Hello there, who are you?", []),
    "one_crop": (
        [{"role": "user", "content": "<ImageHere>What is this?"}],
        [(500, 400, 1)],
        1,
        "<ImageHere>What is this?",
        [],
    ),
    "grid_3x2": (
        [{"role": "user", "content": "Describe <image> in detail."}],
        [(900, 500, 2)],
        6,
        "Describe <ImageHere> in detail.",
        [],
    ),
    "portrait": ([{"role": "user", "content": "Read it."}], [(300, 700, 3)], 4, "<ImageHere>Read it.", []),
    "two_turns": (
        [
            {"role": "user", "content": "<ImageHere>What colour?"},
            {"role": "assistant", "content": "Red, mostly."},
            {"role": "user", "content": "And the shape?"},
        ],
        [(400, 400, 4)],
        2,
        "And the shape?",
        [("<ImageHere>What colour?", "Red, mostly.")],
    ),
}


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_greedy_tokens_equal_the_reference(xc_engine, xc_path, name):
    messages, images, hd_num, query, history = CASES[name]
    pics = [_image(*spec) for spec in images]
    prompt = chat_prompt(query, history)
    views = [hd_transform(p, hd_num) for p in pics]
    theirs = load_folder(str(xc_path)).prefill(prompt, views)
    ours = xc_engine.prompt_logits(messages, pics, max_num=hd_num)
    assert ours.shape == theirs.shape, "the prompt's length differs from the authors' layout"
    assert _rel(ours, theirs) < 1e-4
    result = xc_engine.chat(messages, pics, max_num=hd_num, max_new_tokens=STEPS, ignore_eos=True)
    assert result.token_ids == load_folder(str(xc_path)).greedy(prompt, views, STEPS)
    if name == "grid_3x2":
        assert result.tiles == [7] and xc_engine.prepare(messages, pics, hd_num).grids == [(2, 3)]


def test_bos_first_equals_the_reference_with_one_bos(xc_path):
    pics = [_image(500, 400, 5)]
    engine = Engine.from_pretrained(xc_path, device="cpu", dtype=torch.float32, bos_placement="first")
    messages = [{"role": "user", "content": "Look at <image> closely."}]
    theirs = load_folder(str(xc_path)).prefill(
        chat_prompt("Look at <ImageHere> closely."), [hd_transform(pics[0], 1)], "first"
    )
    ours = engine.prompt_logits(messages, pics, max_num=1)
    engine.close()
    assert ours.shape == theirs.shape and _rel(ours, theirs) < 1e-4


@pytest.fixture
def scratch_engine(xc_path):
    """An engine to break on purpose: its own KV pages (no prefix cache), closed after the test."""
    engine = Engine.from_pretrained(xc_path, device="cpu", dtype=torch.float32, prefix_caching=False)
    yield engine
    engine.close()


def test_a_wrong_plora_scale_or_merge_order_would_be_caught(scratch_engine, xc_path, monkeypatch):
    """The comparison above can fail: the same prompt with the wqkv PLoRA scale at 1.0 instead of 2.0, or the 2x2
    merge in another channel order, moves the logits far past the tolerance."""
    xc_engine = scratch_engine
    messages, images, hd_num, query, _ = CASES["one_crop"]
    pics = [_image(*images[0])]
    theirs = load_folder(str(xc_path)).prefill(chat_prompt(query), [hd_transform(pics[0], hd_num)])
    layer = xc_engine.model.stack.layers[0]
    a, b, _ = layer.lora["wqkv"]
    monkeypatch.setitem(layer.lora, "wqkv", (a, b, 1.0))
    assert _rel(xc_engine.prompt_logits(messages, pics, max_num=hd_num), theirs) > 1e-3
    monkeypatch.setitem(layer.lora, "wqkv", (a, b, 2.0))
    ops = xc_engine.model.ops
    swapped = lambda x, g: ops.pixel_shuffle(x.view(x.shape[0], g, g, -1).transpose(1, 2).reshape(x.shape), g)  # noqa: E731
    monkeypatch.setattr(xc_engine.model.vision, "ops", dataclasses.replace(ops, pixel_shuffle=swapped))
    assert _rel(xc_engine.prompt_logits(messages, pics, max_num=hd_num), theirs) > 1e-3


def test_a_batch_equals_each_prompt_alone(xc_engine):
    prompts = ["<image>What is it?", "Tell me a story.", "Compare <image> with <image>."]
    images = [[_image(600, 300, 6)], None, [_image(200, 200, 7), _image(300, 500, 8)]]
    batch = xc_engine.generate(prompts, images, max_num=3, max_new_tokens=12, ignore_eos=True)
    for p, imgs, got in zip(prompts, images, batch):
        alone = xc_engine.generate(p, imgs, max_num=3, max_new_tokens=12, ignore_eos=True)
        assert got.token_ids == alone.token_ids and got.prompt_tokens == alone.prompt_tokens


def test_preempted_sequences_equal_an_unpreempted_run(xc_path, xc_engine):
    """A KV cache that holds about two of these prompts at once: the scheduler preempts and recomputes (image rows
    with their PLoRA again), and every answer is still the unhindered one."""
    prompts = [f"<image>Question {i}?" for i in range(4)]
    images = [[_image(400 + 50 * i, 300, 10 + i)] for i in range(4)]
    runs = xc_engine.generate(prompts, images, max_num=2, max_new_tokens=40, ignore_eos=True)
    want = [r.token_ids for r in runs]
    per_token = 2 * 2 * 2 * 32 * 4  # layers x (k, v) x kv heads x head_dim x fp32 bytes
    room = 2 * max(r.prompt_tokens for r in runs) + 48  # two prompts fit, not both with their 40 new tokens
    small = Engine.from_pretrained(
        xc_path, device="cpu", dtype=torch.float32, kv_cache_memory=per_token * room, kv_page_size=16
    )
    got = small.generate(prompts, images, max_num=2, max_new_tokens=40, ignore_eos=True)
    preemptions = small.stats()["preemptions"]
    small.close()
    assert [r.token_ids for r in got] == want
    assert preemptions > 0, "the cache was large enough: nothing was preempted"


def test_cached_prefix_pages_give_the_cold_answer(xc_engine, xc_path):
    """The second request with the same image starts from the first one's KV pages (image rows included)."""
    pic = _image(500, 500, 20)
    first = xc_engine.generate("<image>What is here?", [pic], max_num=4, max_new_tokens=8, ignore_eos=True)
    again = xc_engine.generate("<image>What is there?", [pic], max_num=4, max_new_tokens=8, ignore_eos=True)
    cold = Engine.from_pretrained(xc_path, device="cpu", dtype=torch.float32, prefix_caching=False)
    want = cold.generate("<image>What is there?", [pic], max_num=4, max_new_tokens=8, ignore_eos=True)
    cold.close()
    assert again.cached_tokens > first.cached_tokens and again.token_ids == want.token_ids
