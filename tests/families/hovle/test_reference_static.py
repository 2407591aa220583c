"""The static-cache reference (the benchmark's compiled Hugging Face baseline) equals the dynamic-cache one."""

import pytest
import torch

from hovle import Engine
from hovle.default_model.cases import make_checkpoint, noise_image
from hovle.reference.model import ReferenceHoVLE
from hovle.reference.static import StaticReferenceHoVLE


@pytest.mark.parametrize("variant", ["hovle", "hovle-hd"])
def test_static_cache_reference_matches_dynamic(tmp_path, variant):
    path = make_checkpoint(tmp_path, variant, variant, normalize_encoder_output=variant == "hovle")
    eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    req = eng.prepare([{"role": "user", "content": "Describe."}], [noise_image(120, 60, 1)], 3)
    dynamic, dyn_logits = ReferenceHoVLE.from_dir(str(path)).greedy(req.ids_emb, req.ids_llm, req.pixel_values, 16)
    static = StaticReferenceHoVLE.from_dir(str(path))
    static.start(len(req.ids_emb) + 20, len(req.ids_llm) + 20)
    tokens, logits = static.greedy(req.ids_emb, req.ids_llm, req.pixel_values, 16)
    assert tokens == dynamic
    assert max(float((a - b).abs().max()) for a, b in zip(logits, dyn_logits)) < 1e-4
