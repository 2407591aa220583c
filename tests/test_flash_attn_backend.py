"""The flash-attn backend's adapter: our cache layout, lengths, slots and causal alignment mapped onto
flash_attn_with_kvcache.

flash-attn cannot be installed here, so a stand-in module implements flash_attn_with_kvcache in plain torch from its
documented contract (q (B, n, Hq, D); k/v cache (N, S, Hkv, D); cache_seqlens keys per row; cache_batch_idx the
cache rows; causal aligned to the bottom right). This checks the adapter, not flash-attn; on a GPU with flash-attn
installed the real package is compared the same way.
"""

import math
import types

import pytest
import torch

from kernels import get_ops
from kernels.attention import attention_ref
from kernels.decode_attention import decode_attention_ref
from kernels.flash_attn_backend import attention_flash, decode_attention_flash, flash_attn_module


def _stand_in_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, cache_batch_idx=None, softmax_scale=None,
                           causal=False, **_):  # fmt: skip
    b, n, hq, d = q.shape
    rep = hq // k_cache.shape[2]
    scale = softmax_scale or 1 / math.sqrt(d)
    rows = cache_batch_idx.long().tolist() if cache_batch_idx is not None else list(range(b))
    out = torch.empty_like(q)
    for i, row in enumerate(rows):
        length = int(cache_seqlens[i])
        k = k_cache[row, :length].double().repeat_interleave(rep, dim=1)  # (L, Hq, D)
        v = v_cache[row, :length].double().repeat_interleave(rep, dim=1)
        scores = torch.einsum("nhd,lhd->hnl", q[i].double(), k) * scale
        if causal:  # bottom-right: query j sees keys <= length - n + j
            hidden = torch.arange(length)[None, :] > (length - n + torch.arange(n))[:, None]
            scores = scores.masked_fill(hidden, float("-inf"))
        out[i] = torch.einsum("hnl,lhd->nhd", torch.softmax(scores, -1), v).to(q.dtype)
    return out


@pytest.fixture
def stand_in(monkeypatch):
    module = types.SimpleNamespace(flash_attn_with_kvcache=_stand_in_with_kvcache)
    monkeypatch.setattr("kernels.flash_attn_backend.flash_attn_module", lambda: module)


def _cache(slots=4, hkv=2, s=64, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(slots, hkv, s, d, generator=g), torch.randn(slots, hkv, s, d, generator=g)


def _rope(t, d, seed):
    angles = torch.rand(t, d // 2, generator=torch.Generator().manual_seed(seed)) * 6
    angles = torch.cat((angles, angles), -1)
    return angles.cos(), angles.sin()


def test_prefill_adapter_matches_attention_ref(stand_in):
    k_cache, v_cache = _cache()
    lens, prefixes, slots = [5, 1, 17], [0, 9, 3], torch.tensor([2, 0, 3])
    cu = torch.tensor([0, 5, 6, 23], dtype=torch.int32)
    q = torch.randn(23, 4, 32)
    cos, sin = _rope(23, 32, 1)
    args = (q, k_cache, v_cache, cu, torch.tensor(prefixes), slots)
    expected = attention_ref(*args, cos=cos, sin=sin)
    assert torch.allclose(attention_flash(*args, cos=cos, sin=sin), expected, atol=1e-5)
    assert sum(lens) == q.shape[0]


def test_decode_adapter_matches_decode_attention_ref(stand_in):
    k_cache, v_cache = _cache(hkv=1)
    q = torch.randn(3, 3, 32)[:, :, :]  # (B, Hq, D), GQA ratio 3
    seq_lens, slots = torch.tensor([7, 1, 40]), torch.tensor([3, 1, 0])
    cos, sin = _rope(3, 32, 2)
    expected = decode_attention_ref(q, k_cache, v_cache, seq_lens, slots, cos=cos, sin=sin)
    got = decode_attention_flash(q, k_cache, v_cache, seq_lens, slots, cos=cos, sin=sin)
    assert torch.allclose(got, expected, atol=1e-5)


def test_backend_needs_the_package_and_cuda():
    if flash_attn_module() is not None and torch.cuda.is_available():
        assert get_ops("flash-attn", "cuda").name == "flash-attn"
    else:
        with pytest.raises(ValueError, match="flash-attn package and a CUDA device"):
            get_ops("flash-attn", "cuda" if torch.cuda.is_available() else "cpu")
