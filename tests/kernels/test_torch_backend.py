"""The torch backend's attention ops (the engine's CPU path) against the fp64 references of the kernel tests.

The keys sit in shuffled pages whose unowned positions hold NaN or inf, so a sequence that reads (or even
multiplies by zero) a key past its length gets NaN. The decode op is batched and sync-free: every row gathers
`max_seq_len` keys and must neutralise the ones past its own length.
"""

import pytest
import torch

from hovle.kernels.attention import attention_ref
from hovle.kernels.decode_attention import decode_attention_ref
from hovle.kernels.torch_backend import attention_torch, decode_attention_torch
from tests.kernels.support import attention_fp64, attention_inputs, decode_attention_fp64, decode_inputs


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("page", [4, 16, 64])
def test_decode_attention_torch_ignores_what_lies_past_each_length(page, poison):
    inputs, dense = decode_inputs([1, 37, 130, 5], 4, 2, 64, torch.float32, True, "cpu", page=page, poison=poison)
    q, k_cache, v_cache, seq_lens, tables, cos, sin = inputs
    out = decode_attention_torch(q, k_cache, v_cache, seq_lens, tables, None, cos, sin, max_seq_len=130)
    gold = decode_attention_fp64(q, *dense, cos, sin)
    ref = decode_attention_ref(q, k_cache, v_cache, seq_lens, tables, None, cos, sin)
    ref_err = (ref.double() - gold).abs().max().item()
    assert (out.double() - gold).abs().max().item() <= 2 * ref_err + 1e-5  # a NaN fails this comparison


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_attention_torch_ignores_what_lies_past_each_length(poison):
    args, (dense_k, dense_v) = attention_inputs(
        [1, 17, 40], [9, 0, 33], 4, 2, 64, torch.float32, True, "cpu", page=16, poison=poison
    )
    q, k_cache, v_cache, cu, prefix, tables, cos, sin = args
    out = attention_torch(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin)
    gold = attention_fp64(q, dense_k, dense_v, cu, prefix, cos, sin)
    ref = attention_ref(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin)
    ref_err = (ref.double() - gold).abs().max().item()
    assert (out.double() - gold).abs().max().item() <= 2 * ref_err + 1e-5
