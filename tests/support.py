"""Plain helpers the tests share (fixtures are in conftest.py): where kernels run, the CUDA skip mark, and the
near-tie rule for comparing two greedy runs, and photo- and drawing-like test images."""

import dataclasses

import numpy as np
import pytest
import torch


def kernel_device() -> str:
    """Where Triton kernel tests run: the GPU when there is one, else the CPU through the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_parting_is_a_near_tie(engine, req, want: list[int], got: list[int], bound: float, other=None) -> None:
    """Two greedy runs of one request (`want` from `engine`, `got` from another path) may part only at a near tie:
    where `engine`'s logits after the common prefix have their top two within `bound` (with `other`, the other
    path's engine, the bound adds twice the two engines' logit difference there: their error at that very step)
    and `got`'s token is one of them. After the first parting the runs see different contexts: not compared."""
    if want == got:
        return
    step = next(i for i, (a, b) in enumerate(zip(want + [-1], got + [-2])) if a != b)
    fed = want[:step]
    at = dataclasses.replace(req, ids_llm=req.ids_llm + fed, ids_emb=req.ids_emb + fed)
    logits = engine.prompt_logits(at)[-1].cpu()
    if other is not None:
        bound += 2 * float((other.prompt_logits(at)[-1].cpu() - logits).abs().max())
    top2 = logits.topk(2).values
    margin = float(top2[0] - top2[1])
    assert margin < bound, f"{req.ids_llm[-8:]}: parted at step {step} with top-2 margin {margin:.3g} >= {bound:.3g}"
    if step < len(got):
        gap = float(logits.max() - logits[got[step]])
        assert gap < bound, f"step {step}: token {got[step]} is {gap:.3g} below the best (bound {bound:.3g})"


def photo(w, h, seed=0):
    """Photo-like: smooth gradients plus seeded noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 220, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 220, h, dtype=np.float32)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) * 0.55], axis=-1)  # (h, w, 3)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)).astype(np.float32), 0, 255).astype(np.uint8)


def drawing(w, h, seed=0):
    """Drawing-like: flat colour rectangles, black and white lines (sharp edges: bicubic overshoot gets clipped)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(12):
        x0, x1 = np.sort(rng.integers(0, w + 1, 2))
        y0, y1 = np.sort(rng.integers(0, h + 1, 2))
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    img[:: max(h // 7, 2)] = 0
    img[:, :: max(w // 9, 2)] = 255
    return img
