"""Next-token selection: repetition penalty, then greedy / temperature / top-k / top-p sampling.

logits: (B, V) fp32. Per-row parameters are (B,) tensors so one call serves a batch of requests with different
settings: temperature (0 = greedy), top_k (0 = off), top_p (1 = off), penalty (1 = off) applied to the tokens
marked in seen (B, V) bool, the way Hugging Face does it (positive logits divided, negative multiplied).
The random draw is an input: uniform (B,) in [0, 1), one per row, turned into a token by inverse-CDF over the
filtered distribution sorted by descending probability. The caller draws it from each request's own generator,
so a seeded request gives the same tokens alone or inside a batch, and the op itself never syncs with the host.
"""

import torch


def repetition_penalty_ref(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    p = penalty.float()[:, None]  # (B, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def _filtered_probs(row: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Sorted (descending) probabilities and their token ids after temperature, top-k and top-p."""
    values, ids = torch.sort(row / temperature, descending=True)
    if 0 < top_k < values.numel():
        values[top_k:] = float("-inf")
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
        before = torch.cumsum(probs, dim=-1) - probs
        probs = torch.where(before >= top_p, torch.zeros_like(probs), probs)
        probs = probs / probs.sum()
    return probs, ids


def sample_ref(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    temps, ks, ps, us = temperature.tolist(), top_k.tolist(), top_p.tolist(), uniform.tolist()
    for b in range(logits.shape[0]):
        if temps[b] <= 0:
            out[b] = torch.argmax(logits[b])
            continue
        probs, ids = _filtered_probs(logits[b].float(), temps[b], int(ks[b]), ps[b])
        cdf = torch.cumsum(probs.double(), dim=-1)
        target = torch.tensor([us[b] * float(cdf[-1])], dtype=torch.float64, device=cdf.device)
        # First token whose cumulative mass exceeds the draw; zero-probability tokens can never be chosen.
        idx = int(torch.searchsorted(cdf, target, right=True).item())
        out[b] = ids[min(idx, probs.numel() - 1)]
    return out
