"""The trained default model on a GPU: bf16 answers (Triton kernels, CUDA graphs) equal the fp32 CPU answers on
held-out scenes, except at a step where the fp32 top-2 margin is below the bf16 error bound (there the two may
legitimately pick different tokens); the GPU's accuracy per question kind is printed (make gpu-check's log).

The bound: twice the largest difference between the GPU's bf16 and the CPU's fp32 logits at the last prompt
position over a sample of the prompts, plus 1e-3.
"""

import dataclasses

import pytest
import torch

from hovle import Engine
from hovle.tooling.default_model import VARIANTS, ensure_default_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SCENES = 100


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_gpu_answers_equal_fp32_cpu_answers(variant):
    from tools.evaluate import held_out

    path = ensure_default_model(variant)
    cpu = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)
    gpu = Engine.from_pretrained(path, device="cuda", dtype=torch.bfloat16, backend="triton", cuda_graphs=True)
    items = held_out(SCENES, cpu.cfg.image_size, cpu.cfg.max_dynamic_patch)
    prompts, images = [q for _, q, _, _ in items], [img for img, _, _, _ in items]
    want = cpu.generate(prompts, images, max_new_tokens=12)
    got = gpu.generate(prompts, images, max_new_tokens=12)
    assert gpu.stats()["graph_replays"] > 0 and gpu.stats()["eager_steps"] == 0
    reqs = [cpu.prepare([{"role": "user", "content": q}], [img]) for img, q, _, _ in items]
    bound = 1e-3 + 2 * max(float((gpu.prompt_logits(r)[-1].cpu() - cpu.prompt_logits(r)[-1]).abs().max())
                           for r in reqs[:8])  # fmt: skip
    for req, w, g in zip(reqs, want, got):
        if w.token_ids == g.token_ids:
            continue
        step = next(i for i, (a, b) in enumerate(zip(w.token_ids + [-1], g.token_ids + [-2])) if a != b)
        fed = w.token_ids[:step]
        logits = cpu.prompt_logits(dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed))
        top2 = logits[-1].topk(2).values
        assert float(top2[0] - top2[1]) < bound, f"{req.ids_llm[-8:]}: diverged at step {step} with margin " \
            f"{float(top2[0] - top2[1]):.3g} >= bound {bound:.3g}"  # fmt: skip
    kinds = sorted({k for *_, k in items})
    report = {k: sum(g.text == a for (_, _, a, kk), g in zip(items, got) if kk == k) for k in kinds}
    totals = {k: sum(kk == k for *_, kk in items) for k in kinds}
    print(f"{variant} bf16 GPU accuracy: " + ", ".join(f"{k} {report[k]}/{totals[k]}" for k in kinds)
          + f"; differs from fp32 CPU on {sum(w.token_ids != g.token_ids for w, g in zip(want, got))} of "
          f"{len(items)} (bound {bound:.3g})")  # fmt: skip
