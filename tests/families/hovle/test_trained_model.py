"""The shipped default model was trained: it answers questions about scenes it never saw, on both backends.

Also checked here: the example picture and its answers come from the scene generator, and batching, the KV cache
and preemption keep its answers (on a model whose logits are not flat). Its training: tests/default_model/.
"""

import dataclasses

import pytest
import torch
from PIL import Image

from hovle import Engine
from hovle.default_model.folder import EXAMPLE_IMAGE, VARIANTS, ensure_default_model, example_questions
from hovle.default_model.questions import questions
from hovle.default_model.scenes import example_scene, random_scene, render
from hovle.kernels._triton import HAS_TRITON, triton_usable
from tools.evaluate import held_out, score
from tools.scene_data import ATTRIBUTE_KINDS, HELD_OUT_SEED
from tools.train_default_model import Recipe

HELD_OUT_SCENES = 100
# Floors: issue 12 asks for 90% on both; the shipped models answer 93.8% (HoVLE) and 97.3% (HoVLE-HD) of these
# questions (README). The margin below that leaves room for a few near-ties that another CPU's float order may flip.
MIN_ACCURACY = {"hovle": 0.91, "hovle-hd": 0.94}
# Example questions the shipped model gets wrong (the demo prints them as WRONG); checked to be still wrong, so a
# retrained model that answers them forces this list to be updated. HoVLE-HD answers the held-out "Is the A left of
# the B?" questions right (8 of 8) but "no" to the example's (by a yes-no logit margin of 0.46): its house and tree
# are barely a third of the width apart, the least the generator asks that question about.
KNOWN_WRONG = {"hovle": set(), "hovle-hd": {"Is the house left of the tree?"}}
TINY = Recipe(
    sizes=dict(hidden=32, intermediate=64, heads=2, kv_heads=1, emb_layers=1, llm_layers=1, image_size=56),
    vocab_size=400,
    corpus_scenes=60,
    steps=3,
    batch=2,
)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def engine(variant):
    return Engine.from_pretrained(ensure_default_model(variant), device="cpu", dtype=torch.float32)


def _report(scores: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{kind} {ok}/{n} = {ok / n:.0%}" for kind, (ok, n) in sorted(scores.items()))


def test_held_out_scenes_are_answered(engine, variant):
    items = held_out(HELD_OUT_SCENES, engine.cfg.image_size, engine.cfg.max_dynamic_patch)
    assert {kind for *_, kind in items} == set(ATTRIBUTE_KINDS)
    scores = score(engine, items)
    correct, total = sum(ok for ok, _ in scores.values()), sum(n for _, n in scores.values())
    assert correct / total >= MIN_ACCURACY[variant], f"accuracy {correct / total:.1%} ({_report(scores)})"


@pytest.mark.skipif(not (HAS_TRITON and triton_usable("cpu")), reason="Triton cannot run here")
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_backend_answers_like_torch(variant):
    """A handful of prompts (the interpreter is slow): Triton gives the torch backend's tokens, and they are right."""
    items = [x for x in held_out(12, 56, 2) if x[3] != "biggest"][:4]  # small pictures: at most 2 tiles + thumbnail
    path = ensure_default_model(variant)
    prompts, images = [q for _, q, _, _ in items], [img for img, _, _, _ in items]
    ours = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, backend="triton")
    theirs = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, backend="torch")
    got = ours.generate(prompts, images, max_num=2, max_new_tokens=6)
    want = theirs.generate(prompts, images, max_num=2, max_new_tokens=6)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.text for r in got] == [a for _, _, a, _ in items]


def test_example_picture_is_a_generated_scene():
    shipped = Image.open(EXAMPLE_IMAGE).convert("RGB")
    assert shipped.tobytes() == render(example_scene()).tobytes()
    truth = {q: a for q, a, _ in questions(example_scene())}
    entries = example_questions()
    assert 2 <= len(entries) <= 3
    assert all(e["answer"] == truth[e["question"]] for e in entries)


def test_example_questions_are_answered(engine, variant):
    entries = example_questions()
    results = engine.generate([e["question"] for e in entries], [str(EXAMPLE_IMAGE)] * len(entries))
    right = {e["question"] for e, r in zip(entries, results) if r.text == e["answer"]}
    assert right == {e["question"] for e in entries} - KNOWN_WRONG.get(variant, set())


# ---- batching and the KV cache on a model whose logits are not flat -------------------------------------------


def _margin(logits: torch.Tensor) -> float:
    """Top-1 minus top-2 logit: near-ties are where exact comparisons get fragile."""
    top = logits.float().topk(2).values
    return round(float(top[0] - top[1]), 3)


def _captions(n: int) -> list[tuple[Image.Image, str]]:
    """(picture, caption question) of n held-out scenes: a sentence to answer, many decode steps."""
    scenes = [random_scene(seed) for seed in range(HELD_OUT_SEED + 1000, HELD_OUT_SEED + 1000 + n)]
    return [(render(s), next(q for q, _, kind in questions(s) if kind == "caption")) for s in scenes]


def _held_out_prompts() -> list[tuple[Image.Image, str]]:
    """Attribute questions (short answers) and captions, 1 to 12 tiles."""
    return [(img, q) for img, q, _, _ in held_out(3, 56)[::2]] + _captions(2)


def test_batch_equals_each_prompt_alone(engine, variant, selected_logits):
    # each prompt alone runs cold, not from the pages the batch left in the prefix cache
    path = ensure_default_model(variant)
    cold = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, prefix_caching=False)
    items = _held_out_prompts()
    batch = engine.generate([q for _, q in items], [img for img, _ in items], max_new_tokens=24)
    assert len({len(r.token_ids) for r in batch}) > 1  # rows finish at different steps
    for (img, q), got in zip(items, batch):
        selected_logits.clear()
        alone = cold.generate(q, img, max_new_tokens=24)
        report = f"{q!r}: top-2 margin per step {[_margin(logits[0]) for logits in selected_logits]}"
        print(report)
        assert got.token_ids == alone.token_ids, report


def test_cached_decode_equals_full_recomputation(engine, selected_logits):
    img, question = _captions(2)[-1]
    req = engine.prepare([{"role": "user", "content": question}], [img])
    result = engine.generate(question, img, max_new_tokens=16, ignore_eos=True)
    assert len(selected_logits) == 16
    for step, logits in enumerate(selected_logits):
        fed = result.token_ids[:step]
        full = engine.prompt_logits(dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed))[-1]
        print(f"step {step}: top-2 margin {_margin(full)}")
        assert float((logits[0] - full).abs().max() / full.abs().max()) < 1e-5, f"step {step}"
        assert int(full.argmax()) == result.token_ids[step]


# Bytes of KV cache that hold 8 pages of 16 tokens per stack: room for two or three of the eight captions at once.
TIGHT_KV = {"hovle": 400_000, "hovle-hd": 800_000}


def test_preempted_sequences_answer_as_if_never_preempted(engine, variant):
    """Eight captions through a KV pool too small for them: sequences are preempted, then prefilled again with the
    tokens they had generated (image rows placed from the prompt's spans), and every answer equals the roomy
    engine's, token for token."""
    images, prompts = map(list, zip(*_captions(8)))
    path = ensure_default_model(variant)
    tight = Engine.from_pretrained(
        path,
        device="cpu",
        dtype=torch.float32,
        kv_cache_memory=TIGHT_KV[variant],
        kv_page_size=16,
        prefix_caching=False,
    )
    got = tight.generate(prompts, images, max_new_tokens=32)
    want = engine.generate(prompts, images, max_new_tokens=32)
    assert tight.stats()["preemptions"] > 0
    assert [(r.token_ids, r.finish_reason) for r in got] == [(r.token_ids, r.finish_reason) for r in want]
    tight.close()
