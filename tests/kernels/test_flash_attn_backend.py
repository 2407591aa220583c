"""The flash-attn backend's adapter: our paged cache, lengths and causal alignment mapped onto
flash_attn_with_kvcache.

flash-attn cannot be installed here. On the CPU a stand-in implements flash_attn_with_kvcache's documented paged
contract in plain torch (q (B, n, Hq, D); k/v cache (N_blocks, page, Hkv, D) with page % 256 == 0; block_table
(B, max_blocks) int32 rows of page ids; cache_seqlens int32 keys per row; causal aligned to the bottom right) and
rejects what the real function rejects (a page size that is not a multiple of 256, non-int32 tables or lengths,
a non-contiguous last dim). That checks the adapter's argument mapping, not flash-attn itself: where the real
package imports (a GPU machine with flash-attn installed), `test_real_flash_attn_*` compares it with our references.
"""

import math
import types

import pytest
import torch

from hovle.kernels import get_ops
from hovle.kernels.attention import attention_ref
from hovle.kernels.decode_attention import decode_attention_ref
from hovle.kernels.flash_attn_backend import attention_flash, decode_attention_flash, flash_attn_module
from tests.kernels.support import paged_kv

pytestmark = pytest.mark.gpu  # make gpu-check runs these


def _stand_in_with_kvcache(
    q, k_cache, v_cache, cache_seqlens=None, block_table=None, softmax_scale=None, causal=False, **unexpected
):
    assert not unexpected, f"the adapter passed arguments the stand-in does not model: {sorted(unexpected)}"
    b, n, hq, d = q.shape
    nb, page, hkv, _ = k_cache.shape
    assert page % 256 == 0 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1
    assert cache_seqlens.dtype == block_table.dtype == torch.int32 and block_table.shape[0] == b
    rep, scale = hq // hkv, softmax_scale or 1 / math.sqrt(d)
    out = torch.empty_like(q)
    for i in range(b):
        length = int(cache_seqlens[i])
        pages = block_table[i, : -(-length // page)].long()
        k = k_cache[pages].reshape(-1, hkv, d)[:length].double().repeat_interleave(rep, dim=1)  # (L, Hq, D)
        v = v_cache[pages].reshape(-1, hkv, d)[:length].double().repeat_interleave(rep, dim=1)
        scores = torch.einsum("nhd,lhd->hnl", q[i].double(), k) * scale
        if causal:  # bottom-right: query j sees keys <= length - n + j
            hidden = torch.arange(length)[None, :] > (length - n + torch.arange(n))[:, None]
            scores = scores.masked_fill(hidden, float("-inf"))
        out[i] = torch.einsum("hnl,lhd->nhd", torch.softmax(scores, -1), v).to(q.dtype)
    return out


@pytest.fixture
def stand_in(monkeypatch):
    module = types.SimpleNamespace(flash_attn_with_kvcache=_stand_in_with_kvcache)
    monkeypatch.setattr("hovle.kernels.flash_attn_backend.flash_attn_module", lambda: module)


def _rope(t, d, seed, device="cpu", dtype=torch.float32):
    angles = torch.rand(t, d // 2, generator=torch.Generator().manual_seed(seed)) * 6
    angles = torch.cat((angles, angles), -1)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def _prefill_args(device="cpu", dtype=torch.float32, page=256):
    gen = torch.Generator().manual_seed(0)
    lens, prefixes = [5, 1, 17], [0, 300, 3]
    k_cache, v_cache, tables, _, _ = paged_kv([p + n for p, n in zip(prefixes, lens)], 2, 32, page, dtype, device, gen)
    cu = torch.tensor([0, 5, 6, 23], dtype=torch.int32, device=device)
    q = torch.randn(23, 4, 32, generator=gen).to(device, dtype)
    return (q, k_cache, v_cache, cu, torch.tensor(prefixes, device=device), tables), _rope(23, 32, 1, device, dtype)


def _decode_args(device="cpu", dtype=torch.float32, page=256):
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache, tables, _, _ = paged_kv([7, 1, 400], 1, 32, page, dtype, device, gen)
    q = torch.randn(3, 3, 32, generator=gen).to(device, dtype)  # (B, Hq, D), GQA ratio 3
    seq_lens = torch.tensor([7, 1, 400], device=device)
    return (q, k_cache, v_cache, seq_lens, tables), _rope(3, 32, 2, device, dtype)


def test_prefill_adapter_matches_attention_ref(stand_in):
    args, (cos, sin) = _prefill_args()
    expected = attention_ref(*args, cos=cos, sin=sin)
    assert torch.allclose(attention_flash(*args, cos=cos, sin=sin), expected, atol=1e-5)


def test_decode_adapter_matches_decode_attention_ref(stand_in):
    args, (cos, sin) = _decode_args()
    expected = decode_attention_ref(*args, cos=cos, sin=sin)
    assert torch.allclose(decode_attention_flash(*args, cos=cos, sin=sin), expected, atol=1e-5)


def test_adapter_rejects_pages_flash_attn_cannot_read(stand_in):
    args, _ = _decode_args(page=64)
    with pytest.raises(ValueError, match="multiple of 256"):
        decode_attention_flash(*args)


def test_backend_needs_the_package_and_cuda():
    if flash_attn_module() is not None and torch.cuda.is_available():
        ops = get_ops("flash-attn", "cuda")
        assert ops.name == "flash-attn" and ops.page_multiple == 256
    else:
        with pytest.raises(ValueError, match="flash-attn package and a CUDA device"):
            get_ops("flash-attn", "cuda" if torch.cuda.is_available() else "cpu")


real = pytest.mark.skipif(
    flash_attn_module() is None or not torch.cuda.is_available(), reason="needs the flash-attn package and a GPU"
)


@real
def test_real_flash_attn_prefill_matches_attention_ref():
    args, (cos, sin) = _prefill_args("cuda", torch.bfloat16)
    expected = attention_ref(*args, cos=cos, sin=sin).float()
    torch.testing.assert_close(attention_flash(*args, cos=cos, sin=sin).float(), expected, atol=2e-2, rtol=2e-2)


@real
def test_real_flash_attn_decode_matches_decode_attention_ref():
    args, (cos, sin) = _decode_args("cuda", torch.bfloat16)
    expected = decode_attention_ref(*args, cos=cos, sin=sin).float()
    torch.testing.assert_close(decode_attention_flash(*args, cos=cos, sin=sin).float(), expected, atol=2e-2, rtol=2e-2)
