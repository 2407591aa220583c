"""Next-token selection: repetition penalty, then greedy / temperature / top-k / top-p sampling.

logits: (B, V) fp32. Per-row parameters are (B,) tensors so one call serves a batch of requests with different
settings: temperature (0 = greedy), top_k (0 = off), top_p (1 = off), penalty (1 = off) applied to the tokens
marked in seen (B, V) bool, the way Hugging Face does it (positive logits divided, negative multiplied).
The random draw is an input: uniform (B,) in [0, 1), one per row, turned into a token by inverse-CDF over the
filtered distribution sorted by descending probability. The caller draws it from each request's own generator,
so a seeded request gives the same tokens alone or inside a batch, and the op itself never syncs with the host.

Kernels (no host sync anywhere, so a decode step with sampling can be captured in a CUDA graph):
- repetition_penalty: elementwise over (row, vocab block) programs, correctly rounded division as in torch.
- greedy: each row is split over chunks of 4096 (many programs even at B = 1): per chunk a running per-lane max
  and its index, then the lowest index among the maxima (a NaN counts as the largest value, as in torch.argmax);
  a second kernel reduces the chunk partials per row. The same pass sums exp(x/t - chunk max/t) per chunk, so
  `sample` gets the full-row softmax denominator without another sweep.
- sample: greedy rows take the argmax. The sampled rows need the descending order, which torch.sort (stable)
  gives on the raw logits (dividing by t > 0 keeps the order); then one program per row walks its sorted row:
  v = logit / t, the softmax mass of a top-k prefix, the top-p cut (keep a token while the fp32 cumulative mass
  before it is < top_p, fp64 running sums; the scan stops at the first dropped token), then the inverse-CDF pick
  over the kept prefix, stopping at the first token whose fp64 cumulative mass exceeds u * total. Greedy rows
  skip these loops.
`sample_torch` is the same algorithm composed from torch ops (batched, also sync-free), for comparison.
"""

import torch

from ._triton import tl, triton, triton_usable


def greedy_ref(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (lowest index on ties): the whole selection when every row is greedy. (B, V) -> (B,)."""
    return torch.argmax(logits, dim=-1)


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


def sample_torch(logits, temperature, top_k, top_p, uniform) -> torch.Tensor:
    """`sample_ref`'s semantics as batched torch ops with per-row parameters on the device: no host sync."""
    v = logits.shape[-1]
    greedy = temperature <= 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature).float()[:, None]  # (B, 1)
    values, ids = torch.sort(logits.float() / t, dim=-1, descending=True, stable=True)  # (B, V)
    k = top_k[:, None]  # (B, 1)
    cut_k = (k > 0) & (k < v) & (torch.arange(v, device=logits.device)[None, :] >= k)
    probs = torch.softmax(values.masked_fill(cut_k, float("-inf")), dim=-1)
    p = top_p.float()[:, None]  # (B, 1)
    before = torch.cumsum(probs, dim=-1) - probs
    kept = torch.where(before >= p, torch.zeros_like(probs), probs)
    probs = torch.where(p < 1.0, kept / kept.sum(-1, keepdim=True), probs)
    cdf = torch.cumsum(probs.double(), dim=-1)  # (B, V)
    target = uniform.double()[:, None] * cdf[:, -1:]  # (B, 1)
    idx = torch.searchsorted(cdf, target, right=True).clamp_max(v - 1)  # (B, 1)
    return torch.where(greedy, torch.argmax(logits, dim=-1), ids.gather(1, idx)[:, 0])


@triton.jit
def _penalty_kernel(logits_ptr, seen_ptr, penalty_ptr, out_ptr, stride_logits_b, stride_logits_v, stride_seen_b,
                    stride_seen_v, stride_penalty_b, stride_out_b, V, BLOCK_V: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = offs < V
    x = tl.load(logits_ptr + row * stride_logits_b + offs.to(tl.int64) * stride_logits_v, mask=mask).to(tl.float32)
    seen = tl.load(seen_ptr + row * stride_seen_b + offs.to(tl.int64) * stride_seen_v, mask=mask, other=0)
    p = tl.load(penalty_ptr + row * stride_penalty_b).to(tl.float32)
    penalised = tl.where(x > 0, tl.math.div_rn(x, p), x * p)  # correctly rounded, like torch's division
    tl.store(out_ptr + row * stride_out_b + offs, tl.where(seen != 0, penalised, x), mask=mask)


@triton.jit
def _argmax_lanes(best, best_idx):
    """Lowest index among the lanes' maxima, a NaN counting as the largest value (torch.argmax)."""
    nan = best != best
    has_nan = tl.max(nan.to(tl.int32), axis=0) != 0
    top = tl.max(tl.where(nan, float("-inf"), best), axis=0)
    is_top = tl.where(has_nan, nan, best == top)
    return tl.where(has_nan, float("nan"), top), tl.min(tl.where(is_top, best_idx, 2147483647), axis=0)


@triton.jit
def _row_stats_kernel(logits_ptr, temperature_ptr, max_ptr, idx_ptr, sum_ptr, stride_logits_b, stride_logits_v, V,
                      SPLITS, CHUNK: tl.constexpr, BLOCK_V: tl.constexpr, WITH_SUM: tl.constexpr):  # fmt: skip
    """Partials of one CHUNK of one row: max, its lowest index, and sum(exp((x - max) / t)) for softmax."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    base = logits_ptr + row * stride_logits_b
    lanes = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    best_idx = split * CHUNK + lanes  # an all -inf chunk resolves to its first index
    for i in tl.static_range(CHUNK // BLOCK_V):  # unrolled: every load of the chunk in flight at once
        offs = split * CHUNK + i * BLOCK_V + lanes
        x = tl.load(base + offs.to(tl.int64) * stride_logits_v, mask=offs < V, other=float("-inf")).to(tl.float32)
        take = (x > best) | ((x != x) & (best == best))  # strictly greater keeps the earlier index
        best = tl.where(take, x, best)
        best_idx = tl.where(take, offs, best_idx)
    top, top_idx = _argmax_lanes(best, best_idx)
    out = row * SPLITS + split
    tl.store(max_ptr + out, top)
    tl.store(idx_ptr + out, top_idx)
    if WITH_SUM:
        t = tl.load(temperature_ptr + row).to(tl.float32)
        t = tl.where(t > 0, t, 1.0)
        m = tl.math.div_rn(top, t)
        acc = tl.zeros((BLOCK_V,), tl.float32)
        for i in tl.static_range(CHUNK // BLOCK_V):  # the chunk again, now from L2
            offs = split * CHUNK + i * BLOCK_V + lanes
            x = tl.load(base + offs.to(tl.int64) * stride_logits_v, mask=offs < V, other=float("-inf"))
            v = tl.math.div_rn(x.to(tl.float32), t)
            acc += tl.where(v == float("-inf"), 0.0, tl.exp(v - m))
        tl.store(sum_ptr + out, tl.sum(acc, axis=0))


@triton.jit
def _row_reduce_kernel(max_ptr, idx_ptr, sum_ptr, temperature_ptr, greedy_ptr, z_ptr, SPLITS,
                       BLOCK_S: tl.constexpr, WITH_SUM: tl.constexpr):  # fmt: skip
    """Per row: the argmax over the chunk partials and the softmax denominator sum(exp(x/t - max/t))."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_S)
    mask = offs < SPLITS
    m = tl.load(max_ptr + row * SPLITS + offs, mask=mask, other=float("-inf"))
    idx = tl.load(idx_ptr + row * SPLITS + offs, mask=mask, other=2147483647)
    top, top_idx = _argmax_lanes(m, idx)  # chunk partials come in index order: ties keep the lowest
    tl.store(greedy_ptr + row, top_idx.to(tl.int64))
    if WITH_SUM:
        t = tl.load(temperature_ptr + row).to(tl.float32)
        t = tl.where(t > 0, t, 1.0)
        s = tl.load(sum_ptr + row * SPLITS + offs, mask=mask, other=0.0)
        scaled = tl.exp(tl.math.div_rn(m, t) - tl.math.div_rn(top, t))
        tl.store(z_ptr + row, tl.sum(tl.where(m == float("-inf"), 0.0, s * scaled), axis=0))


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


def _row_stats(logits: torch.Tensor, temperature: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax (B,) int64, softmax denominator of logits / t (B,) fp32) with each row split over many programs."""
    b, v = logits.shape
    chunk = min(4096, triton.next_power_of_2(v))
    block = min(1024, chunk)
    splits = triton.cdiv(v, chunk)
    dev = logits.device
    if b == 0:
        return torch.empty(0, dtype=torch.int64, device=dev), torch.empty(0, dtype=torch.float32, device=dev)
    part_max = torch.empty((b, splits), dtype=torch.float32, device=dev)
    part_idx = torch.empty((b, splits), dtype=torch.int32, device=dev)
    part_sum = torch.empty((b, splits), dtype=torch.float32, device=dev)
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    z = torch.empty(b, dtype=torch.float32, device=dev)
    t = part_sum if temperature is None else temperature  # unread without the sums
    with_sum = temperature is not None
    _row_stats_kernel[(b, splits)](
        logits, t, part_max, part_idx, part_sum, *logits.stride(), v, splits,
        CHUNK=chunk, BLOCK_V=block, WITH_SUM=with_sum, num_warps=4,
    )  # fmt: skip
    block_s = triton.next_power_of_2(splits)
    _row_reduce_kernel[(b,)](
        part_max, part_idx, part_sum, t, tokens, z, splits, BLOCK_S=block_s, WITH_SUM=with_sum, num_warps=1
    )  # fmt: skip
    return tokens, z


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, V) with V > 0, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"logits must be float32/float16/bfloat16, got {logits.dtype}")
    if not triton_usable(logits.device.type):
        raise ValueError(f"logits are on {logits.device}: the Triton kernels need CUDA (or TRITON_INTERPRET=1)")


def _check_row_param(name: str, t: torch.Tensor, logits: torch.Tensor, integer: bool = False) -> None:
    if t.shape != (logits.shape[0],):
        raise ValueError(f"{name} must be (B,) = ({logits.shape[0]},), got {tuple(t.shape)}")
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits are on {logits.device}")
    if integer != (not t.dtype.is_floating_point and t.dtype != torch.bool):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a floating'} tensor, got {t.dtype}")


@torch.library.custom_op("hovle::repetition_penalty", mutates_args=())
def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Hugging Face repetition penalty on the seen tokens: positive logits / penalty, negative ones * penalty.

    logits: (B, V) fp32/fp16/bf16, any strides; seen: (B, V) bool, any strides; penalty: (B,) float.
    Returns new (B, V) fp32 logits (the reference's type promotion).
    """
    _check_logits(logits)
    if seen.shape != logits.shape or seen.dtype != torch.bool or seen.device != logits.device:
        raise ValueError(f"seen must be a bool {tuple(logits.shape)} tensor on {logits.device}, got "
                         f"{seen.dtype} {tuple(seen.shape)} on {seen.device}")  # fmt: skip
    _check_row_param("penalty", penalty, logits)
    b, v = logits.shape
    out = torch.empty((b, v), dtype=torch.float32, device=logits.device)
    if b == 0:
        return out
    block = min(triton.next_power_of_2(v), 2048)
    _penalty_kernel[(b, triton.cdiv(v, block))](
        logits, seen.view(torch.uint8), penalty, out,
        *logits.stride(), *seen.stride(), penalty.stride(0), out.stride(0), v,
        BLOCK_V=block, num_warps=4,
    )  # fmt: skip
    return out


@repetition_penalty.register_fake
def _(logits, seen, penalty):
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.custom_op("hovle::greedy", mutates_args=())
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (lowest index on ties, NaN largest: torch.argmax). logits: (B, V) any strides -> (B,) int64.

    The greedy path of `sample`; callers that know on the host that every row is greedy can call it alone.
    """
    _check_logits(logits)
    return _row_stats(logits, None)[0]


@greedy.register_fake
def _(logits):
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)


@torch.library.custom_op("hovle::sample", mutates_args=())
def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """Per-row greedy / temperature / top-k / top-p sampling with the caller's uniform draws; `sample_ref` semantics.

    logits: (B, V) fp32/fp16/bf16, any strides. temperature: (B,) float (<= 0: greedy). top_k: (B,) integer
    (0 or >= V: off). top_p: (B,) float (1: off). uniform: (B,) float in [0, 1). Returns (B,) int64 token ids.
    """
    _check_logits(logits)
    for name, t in (("temperature", temperature), ("top_p", top_p), ("uniform", uniform)):
        _check_row_param(name, t, logits)
    _check_row_param("top_k", top_k, logits, integer=True)
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
