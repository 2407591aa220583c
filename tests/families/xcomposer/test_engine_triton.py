"""XComposer2-4KHD on the Triton backend passes the reference comparisons of the torch backend: on a GPU natively
(fp32, then bf16 graphs against eager), without one through Triton's interpreter. The Triton ops are the ones that
ran (the op table's launchers, the decode step replayed as a CUDA graph on a GPU)."""

import numpy as np
import pytest
import torch
from PIL import Image

from hovle import Engine
from hovle.kernels._triton import HAS_TRITON, triton_usable
from hovle.reference.xcomposer import chat_prompt, hd_transform, load_folder

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (HAS_TRITON and triton_usable(DEVICE)), reason="Triton cannot run here"),
]
STEPS = 24 if DEVICE == "cuda" else 6  # interpreted kernels are slow: fewer greedy steps on the CPU


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))


@pytest.fixture(scope="module")
def engine(xc_path):
    eng = Engine.from_pretrained(xc_path, device=DEVICE, dtype=torch.float32, backend="triton", cuda_graphs=False)
    yield eng
    eng.close()


def test_the_triton_table_is_what_runs(engine):
    from hovle.kernels import encoder_attention_select, gelu, layer_norm, swiglu

    ops = engine.model.ops
    assert ops.name == "triton"
    assert (
        ops.layer_norm is layer_norm.layer_norm
        and ops.encoder_attention is encoder_attention_select.encoder_attention_auto
    )
    assert ops.gelu is gelu.gelu and ops.swiglu is swiglu.swiglu


@pytest.mark.parametrize(
    "query, size, hd_num", [("Hello there.", None, 1), ("<ImageHere>What is this?", (500, 400), 1)]
)
def test_triton_backend_matches_reference(engine, xc_path, query, size, hd_num):
    pics = [_image(*size, 1)] if size else []
    theirs = load_folder(str(xc_path)).prefill(chat_prompt(query), [hd_transform(p, hd_num) for p in pics])
    ours = engine.prompt_logits([{"role": "user", "content": query}], pics, max_num=hd_num).cpu()
    assert ours.shape == theirs.shape and float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4
    result = engine.chat(
        [{"role": "user", "content": query}], pics, max_num=hd_num, max_new_tokens=STEPS, ignore_eos=True
    )
    views = [hd_transform(p, hd_num) for p in pics]
    assert result.token_ids == load_folder(str(xc_path)).greedy(chat_prompt(query), views, STEPS)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_bf16_graphs_equal_eager(xc_path):
    pics = [_image(700, 400, 2)]
    runs = []
    for graphs in (True, False):
        eng = Engine.from_pretrained(xc_path, device="cuda", dtype=torch.bfloat16, cuda_graphs=graphs)
        out = eng.generate(["<image>Describe.", "Hi."], [pics, None], max_num=4, max_new_tokens=32, ignore_eos=True)
        replays = eng.stats()["graph_replays"]
        eng.close()
        runs.append(([r.token_ids for r in out], replays))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] > 0 and runs[1][1] == 0  # the graph path ran in the first engine only
