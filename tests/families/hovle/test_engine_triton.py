"""The engine on the Triton backend passes the reference tests of the torch backend.

On a machine without a GPU the kernels run through Triton's interpreter (fp32, tiny checkpoints); on a GPU they run
natively. Same criteria as tests/families/hovle/test_engine_reference.py: logits within 1e-4 relative, greedy tokens
identical.
"""

import pytest
import torch

from hovle import Engine
from hovle.default_model.cases import CASES, make_checkpoint, noise_image
from hovle.kernels._triton import HAS_TRITON, triton_usable
from hovle.reference.model import ReferenceHoVLE

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (HAS_TRITON and triton_usable(DEVICE)), reason="Triton cannot run here"),
]
STEPS = 32 if DEVICE == "cuda" else 12  # interpreted kernels are slow: fewer greedy steps on the CPU


@pytest.fixture(scope="module")
def root(make_engine):
    return make_engine.root


@pytest.mark.parametrize("name", list(CASES))
def test_triton_backend_matches_reference(root, name):
    variant, overrides, images, max_num, question = CASES[name]
    path = make_checkpoint(root, name, variant, **overrides)
    eng = Engine.from_pretrained(path, device=DEVICE, dtype=torch.float32, backend="triton", max_context=4096)
    assert eng.model.ops.name == "triton"
    pics = [noise_image(w, h, s) for w, h, s in images]
    req = eng.prepare([{"role": "user", "content": question}], pics, max_num)
    ours = eng.prompt_logits(req).cpu()
    ref = ReferenceHoVLE.from_dir(str(path))
    theirs = ref.prefill(req.ids_emb, req.ids_llm, req.pixel_values)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4

    result = eng.generate(question, pics, max_num=max_num, max_new_tokens=STEPS)
    tokens, _ = ReferenceHoVLE.from_dir(str(path)).greedy(
        req.ids_emb, req.ids_llm, req.pixel_values, STEPS, eos_id=eng.tokenizer.im_end_id
    )
    expected = tokens[:-1] if tokens[-1] == eng.tokenizer.im_end_id else tokens
    assert result.token_ids == expected
