"""The decode step's projections with their neighbours fused: residual add + RMSNorm in front, SwiGLU behind.

    r = x + residual (activation dtype)
    y = rmsnorm(r) @ W^T                               (M, N)          swiglu=False
    y = silu(rmsnorm(r) @ W1^T) * (rmsnorm(r) @ W3^T)  (M, N/2)        swiglu=True, W = [W1; W3] (gate rows, up rows)
    returns (y, r)

x, residual: (M, K) with M the decode batch (small); norm_weight: (K,); weight: (N, K) as torch's linear stores it.
residual=None: r is x. The ref is the unfused composition the model runs otherwise: rms_norm_ref, F.linear,
swiglu_ref, with every intermediate rounded to the activation dtype.

Kernel (a GEMV for small M): one program per BLOCK_N rows of W (N / BLOCK_N programs, many even at M = 1, so the
weight stream fills the GPU), reading W once in BLOCK_K chunks with the M rows (padded to 16 for tl.dot) riding
along from L2. Each program first recomputes the rows' RMS over K (M x K reads, cheap) and normalises on the fly,
rounding as rms_norm_ref does (the add, the cast of the normalised row, the weight product); program 0 writes r.
The SwiGLU epilogue rounds gate and up to the activation dtype before silu(gate) * up, as the unfused pair does.
The result differs from cuBLAS + separate kernels only in the GEMM's summation order. Whether it is faster depends
on the device: the Triton backend measures both per shape (hovle/kernels/autoselect.py) and keeps the faster.
"""

import torch
import torch.nn.functional as F

from ._checks import FLOATS, require
from ._triton import fitting_configs, tl, triton, triton_usable, tuning_configs
from .rms_norm import rms_norm_ref
from .swiglu import swiglu_ref

MAX_ROWS = 64  # larger batches are matrix products: cuBLAS's ground


def norm_linear_ref(x, residual, norm_weight, eps: float, weight, swiglu: bool = False):
    normed, r = rms_norm_ref(x, norm_weight, eps, residual)
    y = F.linear(normed, weight)
    return (swiglu_ref(y) if swiglu else y), r


def _configs() -> list:
    shapes = [(16, 128, 4), (32, 128, 4), (16, 256, 4), (64, 64, 4), (32, 256, 8), (64, 128, 8)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in shapes]


@triton.jit
def _normed_rows(x_ptr, res_ptr, nw_ptr, r_out_ptr, offs_m, offs_k, m_mask, k_mask, stride_x_m, stride_res_m,
                 stride_r_m, inv_rms, writer, HAS_RES: tl.constexpr, NORM: tl.constexpr):  # fmt: skip
    """(BLOCK_M, BLOCK_K) chunk of rmsnorm(x + residual) (or of r = x + residual), rounded as the reference;
    when writer == 0 (program 0's first pass), r is stored too."""
    mask = m_mask[:, None] & k_mask[None, :]
    x = tl.load(x_ptr + offs_m[:, None] * stride_x_m + offs_k[None, :], mask=mask, other=0.0)
    if HAS_RES:
        res = tl.load(res_ptr + offs_m[:, None] * stride_res_m + offs_k[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + res.to(tl.float32)).to(x.dtype)
    write = (tl.zeros_like(offs_m) + writer)[:, None] == 0  # a tensor: the interpreter cannot broadcast a scalar mask
    tl.store(r_out_ptr + offs_m[:, None] * stride_r_m + offs_k[None, :], x, mask=mask & write)
    if NORM:
        w = tl.load(nw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        normed = (x.to(tl.float32) * inv_rms[:, None]).to(x.dtype).to(tl.float32)
        x = (w[None, :] * normed).to(x.dtype)
    return x


def _smem(config, args: dict, consts: dict) -> int:
    """Shared memory of the pipelined tiles: num_stages x (rows BLOCK_M + weight BLOCK_N (twice with SwiGLU)) x
    BLOCK_K."""
    n = config.kwargs["BLOCK_N"] * (2 if consts["SWIGLU"] else 1)
    return config.num_stages * config.kwargs["BLOCK_K"] * (consts["BLOCK_M"] + n) * args["w_ptr"].element_size()


@triton.autotune(
    configs=tuning_configs(_configs()),
    key=["N_OUT", "K", "BLOCK_M", "SWIGLU"],
    prune_configs_by={"early_config_prune": fitting_configs(_smem)},
)
@triton.jit
def _norm_linear_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, y_ptr, r_out_ptr,
                        stride_x_m, stride_res_m, stride_w_n, stride_y_m, stride_r_m,
                        M, N_OUT, K, eps,
                        HAS_RES: tl.constexpr, SWIGLU: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    ss = tl.zeros((BLOCK_M,), tl.float32)  # sum of squares of r = x + residual, per row
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        r = _normed_rows(x_ptr, res_ptr, nw_ptr, r_out_ptr, offs_m, offs_k, m_mask, offs_k < K, stride_x_m,
                         stride_res_m, stride_r_m, ss, pid, HAS_RES, False).to(tl.float32)  # fmt: skip
        ss += tl.sum(r * r, axis=1)
    inv_rms = tl.math.rsqrt(ss / K + eps)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        xk = _normed_rows(x_ptr, res_ptr, nw_ptr, r_out_ptr, offs_m, offs_k, m_mask, k_mask, stride_x_m,
                          stride_res_m, stride_r_m, inv_rms, -1, HAS_RES, True)  # fmt: skip
        w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w_n + offs_k[None, :]
        w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(xk, tl.trans(w), acc, input_precision=PRECISION)
        if SWIGLU:
            up = tl.load(w_ptrs + N_OUT * stride_w_n, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc_up = tl.dot(xk, tl.trans(up), acc_up, input_precision=PRECISION)
    out_dtype = y_ptr.dtype.element_ty
    if SWIGLU:  # gate and up rounded as the unfused GEMM's output, then silu(gate) * up in fp32, as swiglu_ref
        g = acc.to(out_dtype).to(tl.float32)
        u = acc_up.to(out_dtype).to(tl.float32)
        acc = tl.div_rn(g, 1.0 + tl.exp(-g)) * u
    y_ptrs = y_ptr + offs_m[:, None] * stride_y_m + offs_n[None, :]
    tl.store(y_ptrs, acc.to(out_dtype), mask=m_mask[:, None] & n_mask[None, :])


def _check(x, residual, norm_weight, weight, swiglu) -> None:
    require(
        x.dim() == 2 and x.dtype in FLOATS and x.stride(-1) == 1,
        f"x must be (M, K) fp16/bf16/fp32 with a "
        f"contiguous last dim, got {tuple(x.shape)} {x.dtype} strides {x.stride()}",
    )
    m, k = x.shape
    require(1 <= m <= MAX_ROWS, f"x has {m} rows; this kernel serves 1..{MAX_ROWS} (decode batches)")
    require(triton_usable(x.device.type), f"x is on {x.device}: the Triton kernel needs CUDA (or TRITON_INTERPRET=1)")
    if residual is not None:
        require(
            residual.shape == x.shape and residual.dtype == x.dtype and residual.stride(-1) == 1,
            f"residual must match x {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} {residual.dtype}",
        )
    require(
        norm_weight.shape == (k,) and norm_weight.dtype == x.dtype,
        f"norm_weight must be ({k},) {x.dtype}, got {tuple(norm_weight.shape)} {norm_weight.dtype}",
    )
    ok = weight.dim() == 2 and weight.shape[1] == k and weight.dtype == x.dtype and weight.stride(-1) == 1
    require(
        ok, f"weight must be (N, K={k}) {x.dtype} with a contiguous last dim, got {tuple(weight.shape)} {weight.dtype}"
    )
    require(
        not swiglu or weight.shape[0] % 2 == 0,
        f"swiglu needs an even N (gate rows, then up rows), got {weight.shape[0]}",
    )
    for name, t in (("residual", residual), ("norm_weight", norm_weight), ("weight", weight)):
        require(t is None or t.device == x.device, f"{name} is on {t.device if t is not None else ''}, x on {x.device}")


@torch.library.custom_op("hovle::norm_linear", mutates_args=())
def _norm_linear_op(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    swiglu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.shape
    n_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    y = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    r = torch.empty((m, k), dtype=x.dtype, device=x.device)
    res = residual if residual is not None else x  # unread without HAS_RES
    grid = lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)  # noqa: E731
    _norm_linear_kernel[grid](
        x, res, norm_weight, weight, y, r, x.stride(0), res.stride(0), weight.stride(0), y.stride(0), r.stride(0),
        m, n_out, k, eps, HAS_RES=residual is not None, SWIGLU=swiglu,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", BLOCK_M=max(16, triton.next_power_of_2(m)),
    )  # fmt: skip
    return y, r


@_norm_linear_op.register_fake
def _(x, residual, norm_weight, eps, weight, swiglu):
    n_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    return x.new_empty((x.shape[0], n_out)), x.new_empty(x.shape)


def norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    swiglu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """norm_linear_ref's contract in one Triton kernel (no host sync; CUDA-graph capturable).

    x: (M, K), 1 <= M <= 64, fp16/bf16/fp32, contiguous last dim; residual: None or like x; norm_weight: (K,) in
    x's dtype; weight: (N, K) in x's dtype, contiguous last dim (N even with swiglu). Returns (y, r): y (M, N) or
    (M, N/2) with swiglu, r = x + residual (M, K), both in x's dtype.
    """
    _check(x, residual, norm_weight, weight, swiglu)
    return _norm_linear_op(x, residual, norm_weight, float(eps), weight, bool(swiglu))


def _unfused(x, residual, norm_weight, eps, weight, swiglu=False):
    """The same result as separate kernels: Triton rms_norm, cuBLAS linear, Triton swiglu."""
    from .rms_norm import rms_norm
    from .swiglu import swiglu as swiglu_kernel

    normed, r = rms_norm(x, norm_weight, eps, residual)
    y = F.linear(normed, weight)
    return (swiglu_kernel(y) if swiglu else y), r


_CHOICE = None


def norm_linear_auto(x, residual, norm_weight, eps: float, weight, swiglu: bool = False):
    """The Triton backend's norm_linear: the fused kernel or the separate ones, whichever the device runs faster at
    this shape (measured once per (rows bucket, N, K, swiglu)); beyond MAX_ROWS rows always the separate ones."""
    global _CHOICE
    from .autoselect import Choice

    if x.shape[0] > MAX_ROWS:
        return _unfused(x, residual, norm_weight, eps, weight, swiglu)
    if _CHOICE is None:
        _CHOICE = Choice("norm_linear", {"separate": _unfused, "fused": norm_linear})
    key = (triton.next_power_of_2(x.shape[0]), weight.shape[0], weight.shape[1], swiglu, x.dtype)
    return _CHOICE(key, x, residual, norm_weight, eps, weight, swiglu)
