"""Triton greedy / sample / repetition_penalty vs sample_ref and repetition_penalty_ref.

Greedy and the penalty must match exactly. Sampled tokens must match exactly too, given draws that stay clear of
the CDF boundaries: every uniform (and every top_p) used here is at least 1e-5 away from the fp64 cumulative masses
of its row, so fp32 rounding differences (exp, summation order) cannot move a pick across a boundary.
"""

import pytest
import torch

from hovle.kernels.greedy import greedy
from hovle.kernels.repetition_penalty import repetition_penalty, repetition_penalty_ref
from hovle.kernels.sample import sample, sample_ref
from hovle.kernels.torch_backend import sample_torch
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
MARGIN = 1e-5


def fp64_cdf(row: torch.Tensor, t: float, k: int, p: float) -> torch.Tensor:
    """Normalised fp64 cumulative masses, in descending-probability order, of the filtered distribution."""
    values = torch.sort(row.double().cpu() / t, descending=True).values
    if 0 < k < values.numel():
        values[k:] = float("-inf")
    probs = torch.softmax(values, dim=-1)
    if p < 1.0:
        probs = torch.where(torch.cumsum(probs, -1) - probs >= p, 0.0, probs)
    cdf = torch.cumsum(probs, -1)
    return cdf / cdf[-1]


def wide_gaps(cdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's [start, end) of cumulative mass, and which tokens' intervals are wider than 4 * MARGIN."""
    start = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    return start, (cdf - start) > 4 * MARGIN


def top_p_between_tokens(row: torch.Tensor, t: float, k: int, mass: float) -> float:
    """A top_p near `mass` in the middle of a wide token interval: clear of every cumulative-mass boundary."""
    cdf = fp64_cdf(row, t, k, 1.0)
    start, wide = wide_gaps(cdf)
    j = int(torch.where(wide, (cdf - mass).abs(), float("inf")).argmin())
    return float(start[j] + cdf[j]) / 2


def clear_uniform(cdf: torch.Tensor, gen: torch.Generator, low: float) -> float:
    """A draw inside a random wide token interval (preferably ending above `low`), >= MARGIN from its ends."""
    start, wide = wide_gaps(cdf)
    ids = torch.nonzero(wide & (cdf > low))[:, 0]
    ids = ids if ids.numel() else torch.nonzero(wide)[-1:, 0]  # a flat tail: the last wide interval
    j = int(ids[torch.randint(ids.numel(), (), generator=gen)])
    frac = 0.25 + 0.5 * float(torch.rand((), generator=gen, dtype=torch.float64))
    return float(start[j] + frac * (cdf[j] - start[j]))


def settings_and_draws(logits, temps, ks, top_masses, gen, draws):
    """Per-row parameter tensors plus `draws` uniform vectors; a row's top_p sits between two tokens' masses.

    Every other draw aims above 0.95: picks deep in the tail, in the last vocab blocks of a flat distribution.
    """
    ps, cdfs = [], []
    for row, t, k, mass in zip(logits, temps, ks, top_masses):
        p = top_p_between_tokens(row, t, k, mass) if mass < 1.0 and t > 0 else 1.0
        ps.append(p)
        cdfs.append(fp64_cdf(row, t, k, p) if t > 0 else torch.tensor([2.0], dtype=torch.float64))
    params = (
        torch.tensor(temps, dtype=torch.float32, device=DEV),
        torch.tensor(ks, dtype=torch.int64, device=DEV),
        torch.tensor(ps, dtype=torch.float32, device=DEV),
    )
    lows = [0.95 * (i % 2) for i in range(draws)]
    us = [torch.tensor([clear_uniform(c, gen, low) for c in cdfs], dtype=torch.float32, device=DEV) for low in lows]
    return params, us


def check_sample(logits, temps, ks, top_masses, seed, draws=4):
    gen = torch.Generator().manual_seed(seed)
    # The draws are rounded to fp32 (the op's input); rounding moves them by < 1e-7, far inside MARGIN.
    (temperature, top_k, top_p), uniforms = settings_and_draws(logits, temps, ks, top_masses, gen, draws)
    for u in uniforms:
        expected = sample_ref(logits, temperature, top_k, top_p, u)
        assert torch.equal(sample(logits, temperature, top_k, top_p, u), expected)
        assert torch.equal(sample_torch(logits, temperature, top_k, top_p, u), expected)


def random_logits(b, v, seed, scale=2.0, dtype=torch.float32, device=DEV):
    return (scale * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))).to(device, dtype)


@pytest.mark.parametrize("v, scale", [(1000, 2.0), (4099, 0.7)])  # one block; several (flat: mass in every block)
def test_sample_mixed_rows(v, scale):
    """One greedy row, one top-k row, one top-p row in the same call."""
    logits = random_logits(3, v, seed=v, scale=scale)
    check_sample(logits, temps=[0.0, 0.7, 1.3], ks=[0, 40, 0], top_masses=[1.0, 1.0, 0.9], seed=v)


def test_sample_edge_settings():
    """Plain temperature, top_k >= V (off), top_k = 1, top-k and top-p together, and a row with -inf logits."""
    v = 3000
    logits = random_logits(5, v, seed=5)
    logits[4, ::3] = float("-inf")  # a masked vocabulary: masked tokens can never be drawn
    temps, ks = [1.0, 0.5, 2.0, 0.9, 1.1], [0, v + 5, 1, 100, 0]
    check_sample(logits, temps, ks, top_masses=[1.0, 1.0, 1.0, 0.5, 0.8], seed=6)


def test_sample_half_precision_strided_logits():
    """fp16 logits read through a column slice of a wider buffer (row stride V + 7)."""
    wide = random_logits(3, 1207, seed=8, dtype=torch.float16)
    check_sample(wide[:, :1200], temps=[0.8, 0.0, 1.0], ks=[20, 0, 0], top_masses=[1.0, 1.0, 0.7], seed=9)


# The interpreter evaluates both sides of tl.where with numpy: the -inf - -inf of an all -inf row warns there.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("v", [5, 1000, 4099])
def test_greedy_matches_argmax(dtype, v):
    wide = random_logits(5, v + 3, seed=v, dtype=dtype)
    logits = wide[:, 1 : v + 1]  # strided rows
    logits[1, :] = 1.5  # all tied: the lowest index wins
    logits[2, v // 3] = logits[2, v - 1] = 100.0  # two tied maxima far apart
    logits[3, :] = float("-inf")
    logits[4, v // 2] = float("nan")  # torch.argmax treats NaN as the largest value
    expected = torch.argmax(logits, dim=-1)
    assert torch.equal(greedy(logits), expected)
    ones = torch.ones(5, device=DEV)
    zeros = torch.zeros(5, device=DEV)
    assert torch.equal(sample(logits, zeros, zeros.long(), ones, zeros), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repetition_penalty_bit_exact(dtype):
    b, v = 4, 3001
    logits = random_logits(b, v, seed=3, dtype=dtype)
    logits[:, :10] = 0.0  # zeros are multiplied (stay 0) and must keep their sign bit
    logits[0, 10] = -0.0
    seen = torch.rand(b, 2 * v, generator=torch.Generator().manual_seed(4)).to(DEV) < 0.3
    seen = seen[:, ::2]  # a strided mask
    penalty = torch.tensor([1.3, 1.0, 0.7, 2.5], device=DEV)
    out = repetition_penalty(logits, seen, penalty)
    ref = repetition_penalty_ref(logits, seen, penalty)
    assert out.dtype == ref.dtype == torch.float32
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))


def test_fake_tensor_registrations():
    logits = random_logits(2, 300, seed=1)
    ones, zeros = torch.ones(2, device=DEV), torch.zeros(2, device=DEV)
    seen = torch.zeros(2, 300, dtype=torch.bool, device=DEV)
    for op, args in [
        (torch.ops.hovle.sample.default, (logits, ones, zeros.long(), ones, zeros)),
        (torch.ops.hovle.greedy.default, (logits,)),
        (torch.ops.hovle.repetition_penalty.default, (logits, seen, ones)),
    ]:
        assert torch.library.opcheck(op, args, test_utils=("test_faketensor",))["test_faketensor"] == "SUCCESS"


KINDS = [(0.0, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (0.8, 40, 0.5), (1.2, 0, 1.0)]  # (temperature, top_k, mass)


def test_sample_model_vocab_few_rows():
    """V = 92553 on the interpreter too: 23 stats chunks, 46 sorted blocks, picks deep in the tail."""
    logits = random_logits(3, 92553, seed=12, scale=3.0)
    check_sample(logits, temps=[0.0, 1.0, 1.2], ks=[0, 0, 0], top_masses=[1.0, 0.9, 1.0], seed=12, draws=2)


@requires_cuda
@pytest.mark.parametrize("b", [1, 64])
def test_sample_model_vocab_cuda(b):
    logits = random_logits(b, 92553, seed=b, scale=3.0, device="cuda")
    temps, ks, masses = zip(*[KINDS[(i + (b == 1)) % len(KINDS)] for i in range(b)])
    check_sample(logits, list(temps), list(ks), list(masses), seed=b, draws=2)


@requires_cuda
def test_penalty_and_sample_capture_in_a_cuda_graph():
    b, v = 8, 92553
    logits = random_logits(b, v, seed=11, device="cuda")
    seen = torch.rand(b, v, device="cuda") < 0.01
    penalty = torch.full((b,), 1.2, device="cuda")
    temperature = torch.tensor([0.0, 0.7] * 4, device="cuda")
    top_k = torch.tensor([0, 50] * 4, device="cuda")
    top_p = torch.tensor([1.0, 0.9] * 4, device="cuda")
    uniform = torch.rand(b, device="cuda")
    step = lambda: sample(repetition_penalty(logits, seen, penalty), temperature, top_k, top_p, uniform)  # noqa: E731
    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = step()
    uniform.copy_(torch.rand(b, device="cuda"))
    graph.replay()
    assert torch.equal(tokens, step())


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ({"logits": torch.randn(8)}, ValueError, "logits must be"),
        ({"logits": torch.randint(0, 5, (2, 8))}, TypeError, "logits must be float32"),
        ({"temperature": torch.ones(3)}, ValueError, "temperature must be"),
        ({"top_k": torch.ones(2)}, TypeError, "top_k must be an integer"),
        ({"top_p": torch.ones(2, dtype=torch.int64)}, TypeError, "top_p must be a floating"),
        ({"uniform": torch.ones(2, 1)}, ValueError, "uniform must be"),
    ],
    ids=["1d-logits", "int-logits", "temperature-shape", "top_k-dtype", "top_p-dtype", "uniform-shape"],
)
def test_sample_rejects_bad_inputs(bad, exc, match):
    args = {"logits": torch.randn(2, 8), "temperature": torch.ones(2), "top_k": torch.zeros(2, dtype=torch.int64)}
    args.update({"top_p": torch.ones(2), "uniform": torch.zeros(2)})
    args = {name: t.to(DEV) for name, t in {**args, **bad}.items()}
    with pytest.raises(exc, match=match):
        sample(**args)


def test_repetition_penalty_rejects_bad_inputs():
    logits, penalty = torch.randn(2, 8, device=DEV), torch.ones(2, device=DEV)
    with pytest.raises(ValueError, match="seen must be a bool"):
        repetition_penalty(logits, torch.zeros(2, 8, device=DEV), penalty)
    with pytest.raises(ValueError, match="penalty must be"):
        repetition_penalty(logits, torch.zeros(2, 8, dtype=torch.bool, device=DEV), torch.ones(3, device=DEV))


def test_repetition_penalty_ref_is_hugging_faces_rule():
    """The spec against an independent implementation: transformers' RepetitionPenaltyLogitsProcessor."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 50, generator=gen) * 3
    ids = [torch.randint(0, 50, (n,), generator=gen) for n in (1, 7, 30)]
    for penalty in (0.6, 1.0, 1.3, 4.0):
        seen = torch.zeros(3, 50, dtype=torch.bool)
        for b, row_ids in enumerate(ids):
            seen[b, row_ids] = True
        ours = repetition_penalty_ref(logits, seen, torch.full((3,), penalty))
        for b, row_ids in enumerate(ids):
            theirs = RepetitionPenaltyLogitsProcessor(penalty)(row_ids[None], logits[b : b + 1].clone())
            assert torch.equal(ours[b : b + 1], theirs)
