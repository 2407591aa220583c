"""Engine behaviour on the CPU: KV-cache decode vs recomputation, batching, streaming, sampling, chat, bad input.

Every KV page and decode-row allocation starts as NaN (HOVLE_POISON, tests/conftest.py), so a read past a
sequence's keys shows up as a wrong token.
"""

import dataclasses

import pytest
import torch

from hovle import Engine
from hovle.default_model.cases import make_checkpoint, noise_image
from hovle.reference.model import ReferenceHoVLE
from hovle.runtime.decode import DecodeStep
from hovle.runtime.runner import ModelRunner
from tests.support import assert_parting_is_a_near_tie


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("pre")


@pytest.fixture(scope="module")
def hd_engine(make_engine):
    return make_engine("post", "hovle-hd")


@pytest.fixture(scope="module")
def root(make_engine):
    return make_engine.root


@pytest.mark.parametrize("which", ["engine", "hd_engine"])
def test_cached_decode_equals_full_recomputation_every_step(which, request, selected_logits):
    eng = request.getfixturevalue(which)
    req = eng.prepare([{"role": "user", "content": "Describe."}], [noise_image(120, 60, 1)], 3)
    result = eng.generate("Describe.", noise_image(120, 60, 1), max_num=3, max_new_tokens=12, ignore_eos=True)
    assert len(selected_logits) == 12
    for step, logits in enumerate(selected_logits):
        fed = result.token_ids[:step]
        grown = dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed)
        full = eng.prompt_logits(grown)[-1]
        assert float((logits[0] - full).abs().max() / full.abs().max()) < 1e-5, f"step {step}"


@pytest.mark.parametrize("name,variant", [("pre", "hovle"), ("post", "hovle-hd")])
def test_a_generated_image_context_id_stays_text_when_recomputed(root, name, variant):
    """A model may choose the IMG_CONTEXT id. Decoding embeds every new token as text, so recomputing the sequence
    (after preemption, or scoring a continuation) must too, not take it for an image row."""
    path = make_checkpoint(root, name, variant)
    eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    ctx = eng.cfg.embedding.img_context_token_id
    req = eng.prepare([{"role": "user", "content": "Describe."}], [noise_image(120, 60, 1)], 3)
    fed = [ctx, 5, ctx]  # as if generated
    grown = dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed)
    ours = eng.prompt_logits(grown)
    theirs = ReferenceHoVLE.from_dir(str(path)).prefill(grown.ids_emb, grown.ids_llm, req.pixel_values, generated=3)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4


def test_batch_equals_each_prompt_alone(engine):
    prompts = ["Describe the picture in detail.", "Hi.", "<image>\n<image>\nWhich one is brighter?"]
    images = [[noise_image(150, 60, 2)], None, [noise_image(60, 60, 3), noise_image(40, 90, 4)]]
    batch = engine.generate(prompts, images, max_num=4, max_new_tokens=20)
    for p, imgs, got in zip(prompts, images, batch):
        alone = engine.generate(p, imgs, max_num=4, max_new_tokens=20)
        assert got.token_ids == alone.token_ids
        assert got.text == alone.text
        assert got.prompt_tokens == alone.prompt_tokens


def test_hd_batch_equals_each_prompt_alone(hd_engine):
    prompts = ["Describe.", "What is in the second half?"]
    images = [noise_image(100, 60, 5), noise_image(60, 130, 6)]
    batch = hd_engine.generate(prompts, images, max_num=3, max_new_tokens=12)
    for p, img, got in zip(prompts, images, batch):
        assert got.token_ids == hd_engine.generate(p, img, max_num=3, max_new_tokens=12).token_ids


@pytest.mark.parametrize("stop", [None, ["e"], [" the", "ab"]])
def test_streaming_yields_exactly_the_non_streamed_text(engine, stop):
    kw = dict(max_num=2, max_new_tokens=40, stop=stop)
    img = noise_image(80, 60, 7)
    plain = engine.generate("Tell me a story.", img, **kw)
    stream = engine.generate("Tell me a story.", img, stream=True, **kw)
    deltas = list(stream)
    assert "".join(deltas) == plain.text
    assert stream.result.text == plain.text and stream.result.token_ids == plain.token_ids
    if stop:
        assert not any(s in plain.text for s in stop)


def test_batch_streaming_tags_deltas_with_the_prompt_index(engine):
    stream = engine.generate(["One.", "Two, longer prompt."], None, stream=True, max_new_tokens=15)
    parts = {0: "", 1: ""}
    for index, delta in stream:
        parts[index] += delta
    assert [parts[0], parts[1]] == [r.text for r in stream.results]


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.2, seed=1234)
    a = engine.generate("Sample something.", **kw)
    b = engine.generate("Sample something.", **kw)
    assert a.token_ids == b.token_ids
    batch = engine.generate(["Other prompt here.", "Sample something."], **kw)
    assert batch[1].token_ids == a.token_ids
    c = engine.generate("Sample something.", **{**kw, "seed": 99})
    assert c.token_ids != a.token_ids


SAMPLING = [
    dict(temperature=0.9, top_k=12, top_p=0.8, repetition_penalty=1.3, seed=7),
    dict(temperature=1.3, top_k=0, top_p=0.5, repetition_penalty=1.0, seed=8),
    dict(temperature=0.7, top_k=5, top_p=1.0, repetition_penalty=0.7, seed=9),
    dict(temperature=2.5, top_k=0, top_p=1.0, repetition_penalty=4.0, seed=10),  # the penalty moves the whole CDF
    dict(temperature=0.0, repetition_penalty=1.5),
]


@pytest.mark.parametrize("variant", ["pre", "post"])
@pytest.mark.parametrize("kw", SAMPLING, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_sampling_equals_the_references_under_the_same_draws(root, variant, kw):
    """The engine's tokens equal the reference model's logits put through Hugging Face's repetition penalty (an
    implementation independent of ours; the engine's torch backend uses repetition_penalty_ref) and sample_ref
    with the same uniforms (one draw per token from torch.Generator().manual_seed(seed), as the engine documents)."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from hovle.kernels import sample_ref
    from hovle.reference.model import ReferenceHoVLE

    path = make_checkpoint(root, variant, "hovle-hd" if variant == "post" else "hovle")
    eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    image, steps = noise_image(90, 60, 11), 20
    got = eng.generate("Sample a caption.", image, max_num=2, max_new_tokens=steps, ignore_eos=True, **kw).token_ids
    req = eng.prepare([{"role": "user", "content": "Sample a caption."}], [image], 2)
    ref = ReferenceHoVLE.from_dir(str(path))
    logits = ref.prefill(req.ids_emb, req.ids_llm, req.pixel_values)[-1:]  # (1, V)
    gen = torch.Generator().manual_seed(kw["seed"]) if kw.get("seed") is not None else None
    row = lambda x, dtype=torch.float32: torch.tensor([x], dtype=dtype)  # noqa: E731
    seen, want = list(req.ids_llm), []
    for _ in range(steps):
        if kw["repetition_penalty"] != 1.0:
            logits = RepetitionPenaltyLogitsProcessor(kw["repetition_penalty"])(torch.tensor([seen]), logits)
        u = float(torch.rand((), generator=gen, dtype=torch.float64)) if gen else 0.0
        tok = int(
            sample_ref(
                logits,
                row(kw["temperature"]),
                row(kw.get("top_k", 0), torch.int64),
                row(kw.get("top_p", 1.0)),
                row(u, torch.float64),
            )[0]
        )
        want.append(tok)
        seen.append(tok)
        logits = ref.decode_step(tok)[None]
    assert got == want


def test_repetition_penalty_changes_greedy_output(engine):
    plain = engine.generate("Repeat after me.", max_new_tokens=30)
    penalised = engine.generate("Repeat after me.", max_new_tokens=30, repetition_penalty=3.0)
    assert penalised.token_ids != plain.token_ids
    assert len(set(penalised.token_ids)) >= len(set(plain.token_ids))


def test_chat_multi_turn_builds_the_template_prompt(engine):
    messages = [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A test image."},
        {"role": "user", "content": "And its colours?"},
    ]
    img = noise_image(60, 60, 8)
    req = engine.prepare(messages, [img], 1)
    sys_msg = engine.template.system_message
    ctx = "<IMG_CONTEXT>" * engine.cfg.tokens_per_tile
    text = (
        f"<|im_start|>system\n{sys_msg}<|im_end|><|im_start|>user\n<img>{ctx}</img>\nWhat is this?<|im_end|>"
        "<|im_start|>assistant\nA test image.<|im_end|><|im_start|>user\nAnd its colours?<|im_end|>"
        "<|im_start|>assistant\n"
    )
    assert req.ids_llm == engine.tokenizer.encode(text)
    result = engine.chat(messages, img, max_num=1, max_new_tokens=5)
    assert result.prompt_tokens == len(req.ids_llm) and len(result.token_ids) == 5


def test_a_leading_system_message_replaces_the_default(engine):
    req = engine.prepare([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}])
    text = "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi.<|im_end|><|im_start|>assistant\n"
    assert req.ids_llm == engine.tokenizer.encode(text)


def test_end_of_turn_as_the_first_token_gives_an_empty_answer(engine, monkeypatch):
    im_end = engine.tokenizer.im_end_id
    monkeypatch.setattr(
        ModelRunner, "first_tokens", lambda self, logits, rows, *a: ([im_end] * len(rows), [False] * len(rows))
    )
    r = engine.generate("Hi.", max_new_tokens=5)
    assert (r.text, r.token_ids, r.finish_reason, r.timings.decode_tokens) == ("", [], "stop", 0)


def test_timings_and_result_fields(engine):
    r = engine.generate("Hi.", noise_image(100, 50, 9), max_num=2, max_new_tokens=8)
    assert r.finish_reason == "length" and len(r.token_ids) == 8 and r.tiles == [3]
    t = r.timings
    assert 0 < t.ttft_s <= t.total_s and t.decode_tokens == 7 and t.decode_tok_s > 0


def test_native_and_python_preprocessing_give_the_same_generation(root):
    from hovle.kernels.preprocess import native_available

    if not native_available():
        pytest.skip("the native preprocessing extension is not built here")
    outs = []
    for path in ("python", "native"):
        eng = Engine.from_pretrained(make_checkpoint(root, "pre"), device="cpu", dtype=torch.float32, preprocess=path)
        req = eng.prepare([{"role": "user", "content": "Describe."}], [noise_image(300, 130, 3)], 6)
        assert req.paths == [{"python": "python", "native": "native-cpu"}[path]]
        outs.append((req.pixel_values, eng.generate("Describe.", noise_image(300, 130, 3), max_num=6).token_ids))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_finished_sequences_stop_costing_work(root, monkeypatch):
    """A sequence that hits its budget leaves the decode step; the others go on alone."""
    eng = Engine.from_pretrained(make_checkpoint(root, "pre"), device="cpu", dtype=torch.float32, max_context=200)
    short, long = "Hi.", "Describe everything about this long prompt " * 2
    steps = []
    real_step = DecodeStep.__call__
    monkeypatch.setattr(
        DecodeStep, "__call__", lambda self, rows, *a: steps.append(list(rows)) or real_step(self, rows, *a)
    )
    results = eng.generate([long, short], max_new_tokens=40, ignore_eos=True)
    budget_long = 200 - results[0].prompt_tokens
    assert results[0].finish_reason == "length" and len(results[0].token_ids) == budget_long < 40
    assert len(results[1].token_ids) == 40
    both, alone = steps[: budget_long - 1], steps[budget_long - 1 :]
    assert all(len(s) == 2 for s in both) and all(s == [both[0][1]] for s in alone)
    assert sum(len(s) for s in steps) == (budget_long - 1) + 39


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", ["pre", "post"])
def test_cuda_graph_decode_equals_eager(root, variant):
    """Graph replays give the eager step's tokens. A bucket pads 3 rows to 4, and cuBLAS may sum a 4-row product
    in another order than a 3-row one, so fp32 runs may part at a near tie (top-2 logits within 1e-3), not else."""
    path = make_checkpoint(root, variant, "hovle-hd" if variant == "post" else "hovle")
    prompts = ["Describe.", "<image>\nWhat is here?", "A longer question about nothing at all."]
    images = [noise_image(100, 60, 1), noise_image(60, 60, 2), None]
    outs, engines = [], []
    for graphs in (True, False):
        eng = Engine.from_pretrained(path, device="cuda", dtype=torch.float32, cuda_graphs=graphs)
        outs.append([r.token_ids for r in eng.generate(prompts, images, max_num=2, max_new_tokens=24, ignore_eos=True)])
        stats = eng.stats()
        if graphs:  # the graph path really ran: every decode step was a replay
            assert stats["graph_replays"] == stats["decode_steps"] > 0 and stats["eager_steps"] == 0
        else:
            assert stats["eager_steps"] == stats["decode_steps"] > 0 and stats["graph_replays"] == 0
        engines.append(eng)
    eager = engines[1]
    for prompt, image, with_graphs, without in zip(prompts, images, *outs):
        req = eager.prepare([{"role": "user", "content": prompt}], [image] if image is not None else [], 2)
        assert_parting_is_a_near_tie(eager, req, without, with_graphs, 1e-3)


def test_a_batch_streams_result_names_results(engine):
    from hovle import HoVLEError

    stream = engine.generate(["One.", "Two."], None, stream=True, max_new_tokens=2)
    with pytest.raises(HoVLEError, match="2 results, one per prompt: use stream.results"):
        _ = stream.result
    assert len(stream.results) == 2
