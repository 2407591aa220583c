"""Next-token selection: greedy / temperature / top-k / top-p sampling (after the repetition penalty, if any).

logits: (B, V) fp32. Per-row parameters are (B,) tensors so one call serves a batch of requests with different
settings: temperature (0 = greedy), top_k (0 = off), top_p (1 = off).
The random draw is an input: uniform (B,) in [0, 1), one per row, turned into a token by inverse-CDF over the
filtered distribution sorted by descending probability. The caller draws it from each request's own generator,
so a seeded request gives the same tokens alone or inside a batch, and the op itself never syncs with the host.

Kernels (no host sync anywhere, so a decode step with sampling can be captured in a CUDA graph):
- hovle/kernels/greedy.py gives each row's argmax and its full-row softmax denominator in one split pass.
- sample: greedy rows take the argmax. The sampled rows need the descending order, which torch.sort (stable)
  gives on the raw logits (dividing by t > 0 keeps the order); then one program per row walks its sorted row:
  v = logit / t, the softmax mass of a top-k prefix, the top-p cut (keep a token while the fp32 cumulative mass
  before it is < top_p, fp64 running sums; the scan stops at the first dropped token), then the inverse-CDF pick
  over the kept prefix, stopping at the first token whose fp64 cumulative mass exceeds u * total. Greedy rows
  skip these loops.
`kernels.torch_backend.sample_torch` is the same algorithm composed from torch ops (batched, also sync-free).
"""

import torch

from ._checks import check_logits, check_row_param
from ._triton import tl, triton
from .greedy import _row_stats


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
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
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


@triton.jit
def _probs(values_ptr, offs, L, v0, t, z):
    """fp32 softmax mass of sorted positions offs (0 at and beyond L, the top-k bound)."""
    x = tl.load(values_ptr + offs.to(tl.int64), mask=offs < L, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(tl.exp(tl.math.div_rn(x, t) - v0), z)


@triton.jit
def _sample_sorted_kernel(values_ptr, ids_ptr, greedy_ptr, z_ptr, temperature_ptr, top_k_ptr, top_p_ptr,
                          uniform_ptr, out_ptr, stride_values_b, stride_ids_b, V, BLOCK_V: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    values_ptr += row * stride_values_b
    lanes = tl.arange(0, BLOCK_V)
    t = tl.load(temperature_ptr + row).to(tl.float32)
    k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row).to(tl.float32)
    sampling = t > 0
    t = tl.where(sampling, t, 1.0)
    top_k = (k > 0) & (k < V)
    L = tl.where(sampling, tl.where(top_k, k, V).to(tl.int32), 0)  # greedy rows: every loop below runs zero times
    v0 = tl.math.div_rn(tl.load(values_ptr).to(tl.float32), t)

    # Softmax denominator: the whole row's comes from the stats kernels; a top-k prefix is summed here.
    z_acc = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, tl.where(top_k, L, 0), BLOCK_V):
        offs = start + lanes
        x = tl.load(values_ptr + offs.to(tl.int64), mask=offs < L, other=float("-inf")).to(tl.float32)
        z_acc += tl.exp(tl.math.div_rn(x, t) - v0)
    z = tl.where(top_k, tl.sum(z_acc, axis=0), tl.load(z_ptr + row))

    # Top-p keeps position i iff fp32(cumsum through i) - p_i < top_p: a prefix, so the scan stops at the first drop.
    use_p = top_p < 1.0
    cut = tl.where(use_p, top_p, float("inf"))
    L_p = tl.where(use_p, 0, L)
    kept_mass = tl.zeros((BLOCK_V,), tl.float64)
    cum = tl.zeros((), tl.float64)
    start = tl.zeros((), tl.int32)
    stop = tl.where(use_p, L, 0)
    while start < stop:
        offs = start + lanes
        p = _probs(values_ptr, offs, L, v0, t, z)
        keep = (((cum + tl.cumsum(p.to(tl.float64), 0)).to(tl.float32) - p) < cut) & (offs < L)
        kept_mass += tl.where(keep, p, 0.0).to(tl.float64)
        L_p = tl.maximum(L_p, tl.max(tl.where(keep, offs + 1, 0), axis=0))
        cum += tl.sum(p.to(tl.float64), axis=0)
        stop = tl.where(tl.min(tl.where(offs < L, keep, 1), axis=0) == 0, 0, stop)
        start += BLOCK_V
    renorm = tl.where(use_p, tl.sum(kept_mass, axis=0).to(tl.float32), 1.0)

    # Inverse CDF over the kept, renormalised masses (fp64 running sums, as the reference's cdf).
    total_acc = tl.zeros((BLOCK_V,), tl.float64)
    cum = tl.zeros((), tl.float64)
    for start in range(0, L_p, BLOCK_V):
        offs = start + lanes
        p = _probs(values_ptr, offs, L, v0, t, z)
        keep = ((cum + tl.cumsum(p.to(tl.float64), 0)).to(tl.float32) - p) < cut
        total_acc += tl.where(keep, tl.math.div_rn(p, renorm), 0.0).to(tl.float64)
        cum += tl.sum(p.to(tl.float64), axis=0)
    target = tl.load(uniform_ptr + row).to(tl.float64) * tl.sum(total_acc, axis=0)
    pick = V - 1  # no crossing (only u >= 1 could do that): the reference's clamp
    cum = tl.zeros((), tl.float64)
    cdf = tl.zeros((), tl.float64)
    start = tl.zeros((), tl.int32)
    stop = L_p
    while start < stop:
        offs = start + lanes
        p = _probs(values_ptr, offs, L, v0, t, z)
        keep = ((cum + tl.cumsum(p.to(tl.float64), 0)).to(tl.float32) - p) < cut
        q = tl.where(keep, tl.math.div_rn(p, renorm), 0.0).to(tl.float64)
        hit = ((cdf + tl.cumsum(q, 0)) > target) & (offs < L_p)
        pick = tl.minimum(pick, tl.min(tl.where(hit, offs, V - 1), axis=0))
        cum += tl.sum(p.to(tl.float64), axis=0)
        cdf += tl.sum(q, axis=0)
        stop = tl.where(tl.max(hit.to(tl.int32), axis=0) != 0, 0, stop)
        start += BLOCK_V
    token = tl.load(ids_ptr + row * stride_ids_b + pick)
    tl.store(out_ptr + row, tl.where(sampling, token, tl.load(greedy_ptr + row)))


def _row_block(v: int) -> tuple[int, int]:
    """Deterministic (BLOCK_V, num_warps) for one program streaming a row of v elements."""
    block = min(triton.next_power_of_2(max(v, 1)), 2048)
    return block, 8 if block >= 2048 else 4


@torch.library.custom_op("hovle::sample", mutates_args=())
def sample(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """Per-row greedy / temperature / top-k / top-p sampling with the caller's uniform draws; `sample_ref` semantics.

    logits: (B, V) fp32/fp16/bf16, any strides. temperature: (B,) float (<= 0: greedy). top_k: (B,) integer
    (0 or >= V: off). top_p: (B,) float (1: off). uniform: (B,) float in [0, 1). Returns (B,) int64 token ids.
    """
    check_logits(logits)
    for name, t in (("temperature", temperature), ("top_p", top_p), ("uniform", uniform)):
        check_row_param(name, t, logits)
    check_row_param("top_k", top_k, logits, integer=True)
    b, v = logits.shape
    temperature, top_k, top_p, uniform = (x.contiguous() for x in (temperature, top_k, top_p, uniform))
    tokens, z = _row_stats(logits, temperature)
    values, ids = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V) each, contiguous
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    if b == 0:
        return out
    block, warps = _row_block(v)
    _sample_sorted_kernel[(b,)](
        values, ids, tokens, z, temperature, top_k, top_p, uniform, out,
        values.stride(0), ids.stride(0), v,
        BLOCK_V=block, num_warps=warps,
    )  # fmt: skip
    return out


@sample.register_fake
def _(logits, temperature, top_k, top_p, uniform):
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)
