"""Bad input to an Engine fails early with a message naming what was wrong and what was expected: sampling
parameters, prompts longer than the context, tile budgets, images, placeholders, chat structure, engine options."""

import pytest
import torch

from hovle import Engine, InputError
from hovle.default_model.cases import make_checkpoint, noise_image

SYSTEM, USER, ASSISTANT = ({"role": r, "content": "x"} for r in ("system", "user", "assistant"))
BAD_SAMPLING = [
    {"max_new_tokens": 0},
    {"max_new_tokens": 2.5},
    {"temperature": -1.0},
    {"temperature": float("nan")},
    {"top_k": -3},
    {"top_p": 0.0},
    {"top_p": 1.5},
    {"repetition_penalty": 0.0},
    {"seed": -1},
    {"stop": [""]},
    {"stop": [3]},
]


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine("pre")


@pytest.fixture(scope="module")
def root(make_engine):
    return make_engine.root


@pytest.mark.parametrize("bad", BAD_SAMPLING, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_invalid_sampling_parameters_raise_clear_errors(engine, bad):
    key = next(iter(bad))
    with pytest.raises(InputError, match=key):
        engine.generate("Hi.", **bad)


def test_prompt_longer_than_the_context_raises_before_running(root):
    eng = Engine.from_pretrained(make_checkpoint(root, "pre"), device="cpu", dtype=torch.float32, max_context=64)
    with pytest.raises(InputError, match=r"prompt has \d+ tokens .* context is 64"):
        eng.generate("word " * 200)


@pytest.mark.parametrize("max_num", [0, -2, 1.5, "6"])
def test_invalid_tile_budget_raises(engine, max_num):
    with pytest.raises(InputError, match="max_num"):
        engine.generate("Describe.", noise_image(60, 60, 1), max_num=max_num)


def test_a_bad_image_is_named_by_its_place(engine):
    with pytest.raises(ValueError, match="image 1: .*dtype float64"):
        engine.generate("<image><image> compare", [noise_image(30, 30, 1), __import__("numpy").ones((8, 8))])


def test_image_placeholder_count_mismatch(engine):
    with pytest.raises(InputError, match="2 <image> placeholders but 1 images"):
        engine.generate("<image> and <image>", noise_image(60, 60, 1))
    with pytest.raises(InputError, match="list of 2 entries"):
        engine.generate(["a", "b"], [noise_image(60, 60, 1)])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dtype": "int8"}, "dtype"),
        ({"hd_decode": "x"}, "hd_decode"),
        ({"preprocess": "gpu"}, "preprocess"),
        ({"backend": "nope"}, "backend"),
        ({"device": "cuda:0"}, "CUDA"),
    ],
)
def test_bad_engine_options_raise_before_loading(root, kw, match):
    if kw.get("device") and torch.cuda.is_available():
        pytest.skip("a CUDA device exists")
    with pytest.raises(ValueError, match=match):
        Engine.from_pretrained(make_checkpoint(root, "pre"), **kw)


@pytest.mark.parametrize(
    "messages,match",
    [
        ([SYSTEM], "only a system message; a user turn must follow"),
        ([SYSTEM, ASSISTANT], r"messages\[1\] must be \{'role': 'user'"),
        ([SYSTEM, USER, USER], r"messages\[2\] must be \{'role': 'assistant'"),
        ([USER, ASSISTANT], "must end with a user turn"),
        ([SYSTEM, USER, ASSISTANT], "must end with a user turn"),
        ([{"role": "tool", "content": "x"}], r"messages\[0\] must be \{'role': 'user'"),
        ([SYSTEM, {"role": "user", "content": ""}], r"messages\[1\] content must be a non-empty str"),
    ],
)
def test_chat_structure_errors_name_the_callers_message(engine, messages, match):
    """Errors point at the caller's own index (a leading system message counted) and say what was expected."""
    with pytest.raises(InputError, match=match):
        engine.chat(messages, max_new_tokens=1)
