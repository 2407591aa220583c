"""Hardening: one Engine from several threads and streams, bounded work for any input, clean errors.

The concurrency contract (README): Engine.generate / chat / prompt_logits may be called from any number of threads
at once; every call's requests join the same continuously batched scheduler and each caller gets exactly its own
answer. An unfinished stream keeps its own buffer while other requests run; closing it early cancels its requests.
"""

import concurrent.futures
import time

import pytest
import torch

from hovle import Engine, HoVLEError, InputError, WeightsError
from hovle.default_model.cases import make_checkpoint, noise_image
from hovle.errors import NumericsError
from hovle.prompt import get_template


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("pre", max_context=1024)


@pytest.fixture(scope="module")
def root(make_engine):
    return make_engine.root


PROMPTS = ["Describe the picture.", "What colour is the sky?", "Count the trees.", "Hi.", "Tell me a story."]


def test_threads_calling_generate_each_get_their_own_answer(engine):
    images = [noise_image(90, 60, i) for i in range(len(PROMPTS))]
    expected = [engine.generate(p, img, max_num=2, max_new_tokens=16).token_ids for p, img in zip(PROMPTS, images)]
    jobs = [(i % len(PROMPTS)) for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda i: engine.generate(PROMPTS[i], images[i], max_num=2, max_new_tokens=16).token_ids, jobs)
        )
    assert got == [expected[i] for i in jobs]


def test_two_streams_iterated_alternately_keep_their_own_tokens(engine):
    plain = [engine.generate(p, max_new_tokens=24, ignore_eos=True).text for p in PROMPTS[:2]]
    streams = [iter(engine.generate(p, stream=True, max_new_tokens=24, ignore_eos=True)) for p in PROMPTS[:2]]
    texts, live = ["", ""], [True, True]
    while any(live):
        for i, s in enumerate(streams):
            if live[i]:
                try:
                    texts[i] += next(s)
                except StopIteration:
                    live[i] = False
    assert texts == plain


def test_closing_a_stream_cancels_it_and_frees_its_pages(engine):
    stream = engine.generate("Tell me a long story.", stream=True, max_new_tokens=500, ignore_eos=True)
    first = next(iter(stream))
    stream.close()
    other = engine.generate("Hi.", max_new_tokens=5)  # the engine goes on serving
    deadline = time.monotonic() + 10
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = engine.stats()
    assert isinstance(first, str) and len(other.token_ids) <= 5
    assert stats["running"] == stats["prefilling"] == 0 and stats["kv_pages_used"] == (0, 0)


def test_a_huge_token_budget_allocates_only_what_is_generated(root):
    """256 prompts asking for 10**9 tokens: the budget is the context, pages come as tokens do, preemption makes
    room when they run out, and every request ends."""
    eng = Engine.from_pretrained(
        make_checkpoint(root, "pre"),
        device="cpu",
        dtype=torch.float32,
        max_context=192,
        kv_cache_memory=3 << 20,
        kv_page_size=16,
    )
    results = eng.generate([f"Item {i}." for i in range(256)], max_new_tokens=10**9, ignore_eos=True)
    assert all(r.finish_reason == "length" and r.prompt_tokens + len(r.token_ids) == 192 for r in results)
    stats = eng.stats()
    assert stats["preemptions"] > 0 and stats["kv_pages_used"] == (0, 0)
    eng.close()


def test_tile_budget_is_bounded_and_the_grid_search_is_fast(engine, root):
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"max_num = 1000000; expected an integer in \[1, 12\]"):
        engine.generate("Describe.", noise_image(60, 60, 1), max_num=1_000_000)
    with pytest.raises(InputError, match="hard cap is 128"):
        Engine.from_pretrained(make_checkpoint(root, "pre"), device="cpu", max_tiles=1000)
    assert time.perf_counter() - start < 1.0
    from hovle.loaders.image import _candidate_grids, choose_grid

    start = time.perf_counter()
    assert choose_grid(4000, 30, min_num=1, max_num=128, image_size=448) == (128, 1)
    _candidate_grids(1, 4000)
    assert time.perf_counter() - start < 1.0


def test_nan_weights_are_refused_at_load_naming_the_tensor(root):
    import json

    from safetensors.torch import load_file, save_file

    path = make_checkpoint(root, "nan_weights")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = "language_model.model.layers.1.feed_forward.w2.weight"
    shard = path / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name][3, 5] = float("nan")
    save_file(tensors, shard)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.") + ".*NaN or inf"):
        Engine.from_pretrained(path, device="cpu")


def test_non_finite_logits_fail_the_request_naming_the_step(root):
    eng = Engine.from_pretrained(make_checkpoint(root, "pre"), device="cpu", dtype=torch.float32)
    eng.model.head[7] = float("inf")  # logit 7 of every position becomes inf (or NaN)
    with pytest.raises(NumericsError, match="generated token 0 are not finite"):
        eng.generate("Hi.", max_new_tokens=4)
    eng.model.head[7] = 0.0
    assert len(eng.generate("Hi.", max_new_tokens=3).token_ids) <= 3  # the engine goes on serving
    eng.close()


def test_errors_are_the_engines_own(engine):
    for call in (
        lambda: engine.generate("x", max_new_tokens=-1),
        lambda: engine.generate(["a", 3]),
        lambda: engine.chat([{"role": "assistant", "content": "x"}]),
        lambda: engine.generate("bad \udcff text"),
    ):
        with pytest.raises(HoVLEError):
            call()


def _vocab_checkpoint(root, extra: int, name: str):
    """A checkpoint whose model vocabulary is the tokenizer's + `extra` rows, the extra rows of the output head
    scaled so that, unmasked, they would win every greedy step."""
    from hovle.default_model.cases import SMALL
    from hovle.default_model.checkpoint import write_checkpoint
    from hovle.default_model.folder import bundled_tokenizer, config_dict, random_tensors
    from hovle.families.hovle.config import HoVLEConfig

    tok, files = bundled_tokenizer()
    raw = config_dict("hovle", vocab_size=tok.vocab_size + extra, img_context_token_id=tok.img_context_id, **SMALL)

    def tensors():
        for tname, t in random_tensors(HoVLEConfig.from_dict(raw)):
            if extra > 0 and tname == "language_model.output.weight":
                t[tok.vocab_size :] *= 100.0
            yield tname, t

    return write_checkpoint(root / name, raw, tensors(), extra_files=files), tok


def test_ids_the_tokenizer_cannot_produce_are_never_chosen(root):
    path, tok = _vocab_checkpoint(root, 500, "big_vocab")
    eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    for kw in ({}, {"temperature": 1.5, "seed": 3}, {"repetition_penalty": 2.0}):
        r = eng.generate("Hi.", max_new_tokens=12, ignore_eos=True, **kw)
        assert len(r.token_ids) == 12 and max(r.token_ids) < tok.vocab_size, kw
    eng.close()


def test_a_tokenizer_larger_than_the_model_is_refused_at_load(root):
    from hovle import TokenizerError

    path, tok = _vocab_checkpoint(root, -3, "small_vocab")
    with pytest.raises(TokenizerError, match=f"tokenizer has {tok.vocab_size} ids but the model's vocabulary is"):
        Engine.from_pretrained(path, device="cpu")


# ---- the raw-prompt opt-in ---------------------------------------------------------------------------------------


def _template_text(question: str) -> str:
    t = get_template("internlm2-chat")
    return (
        f"{t.start}{t.roles[0]}{t.system_message}{t.sep}{t.start}{t.roles[1]}<image>\n{question}{t.sep}"
        f"{t.start}{t.roles[2]}"
    )


def test_a_raw_prompt_honours_control_tokens_and_image_slots(engine):
    """The opt-in: the template's own text, typed, gives exactly the ids the chat API builds (control tokens, the
    image expansion), and the same answer."""
    image = noise_image(90, 60, 3)
    chat = engine.prepare([{"role": "user", "content": "What is it?"}], [image])
    raw = engine.builder.build([], [image], raw=_template_text("What is it?"))
    assert raw.ids_llm == chat.ids_llm and raw.spans_llm == chat.spans_llm
    assert raw.ids_llm.count(engine.tokenizer.im_end_id) == 2
    got = engine.generate(_template_text("What is it?"), image, raw=True, max_new_tokens=6)
    assert got.token_ids == engine.generate("What is it?", image, max_new_tokens=6).token_ids


@pytest.mark.parametrize(
    "text,n_images", [("hi <IMG_CONTEXT> there", 0), ("<image><IMG_CONTEXT>", 1), ("<IMG_CONTEXT><IMG_CONTEXT>", 0)]
)
def test_a_raw_prompt_cannot_place_image_rows_itself(engine, text, n_images):
    images = [noise_image(60, 60, 1)] * n_images
    with pytest.raises(InputError, match="<IMG_CONTEXT> outside the image slots"):
        engine.generate(text, images if images else None, raw=True, max_new_tokens=2)
    assert engine.generate("Hi.", max_new_tokens=2).finish_reason in ("stop", "length")  # the engine goes on
