"""Launch parameters the GPU would reject, found on the CPU: num_warps that is not a power of two, and tile configs
whose shared memory does not fit the device (the fp32 first configs of decode attention and patch embedding need
192 KiB: more than many GPUs have, with nothing to fall back to when autotuning is off)."""

import pytest
import torch

from hovle.kernels import _triton
from hovle.kernels import attention as attention_mod
from hovle.kernels import decode_attention as decode_mod
from hovle.kernels import norm_linear as norm_linear_mod
from hovle.kernels import patch_embed as patch_mod


@pytest.mark.parametrize("elements", [1, 64, 192, 384, 512, 768, 1024, 1536, 2560, 3072, 4096, 6144, 1 << 20])
def test_warps_is_a_power_of_two_in_range(elements):
    w = _triton.warps(elements)
    assert 1 <= w <= 8 and w & (w - 1) == 0
    assert w <= max(1, elements // 512)  # never more warps than the work asks for


def test_kv_store_and_rotary_launch_widths_are_powers_of_two():
    """Hkv * D = 3 * 512 asked for 3 warps before (a launch error on the GPU)."""
    assert _triton.warps(3 * 512) == 2 and _triton.warps(6 * 128) == 1 and _triton.warps(24 * 128) == 4


class _Arg:
    """What early_config_prune reads of a pointer argument: its dtype's size and its device."""

    def __init__(self, dtype, device="cuda"):
        self.dtype, self.device = dtype, torch.device(device)

    def element_size(self):
        return torch.empty((), dtype=self.dtype).element_size()


def _prune(kernel, monkeypatch, limit: int, args: dict, consts: dict, tuning: bool) -> list:
    monkeypatch.setattr(_triton, "smem_limit", lambda device: limit)
    monkeypatch.setattr(_triton, "autotuning", lambda: tuning)
    return kernel.early_config_prune(kernel.configs, args, **consts)


def _decode_args(dtype):
    return {"k_ptr": _Arg(dtype), "q_ptr": _Arg(dtype)}, {"BLOCK_D": 128}


def test_decode_attention_fp32_keeps_only_configs_that_fit(monkeypatch):
    kernel = decode_mod._decode_attention_kernel
    args, consts = _decode_args(torch.float32)
    first = kernel.configs[0]
    assert decode_mod._smem(first, args, consts) == 192 << 10  # the first config is too big for a 160 KiB device
    kept = _prune(kernel, monkeypatch, 160 << 10, args, consts, tuning=True)
    assert first not in kept and kept
    assert all(decode_mod._smem(c, args, consts) <= (160 << 10) - _triton.SMEM_MARGIN for c in kept)
    bf16_args, _ = _decode_args(torch.bfloat16)
    assert _prune(kernel, monkeypatch, 160 << 10, bf16_args, consts, tuning=True)[0] is first  # bf16: half the bytes


def test_without_autotuning_the_first_config_that_fits_runs(monkeypatch):
    kernel = decode_mod._decode_attention_kernel
    args, consts = _decode_args(torch.float32)
    kept = _prune(kernel, monkeypatch, 160 << 10, args, consts, tuning=False)
    assert len(kept) == 1 and decode_mod._smem(kept[0], args, consts) <= (160 << 10) - _triton.SMEM_MARGIN
    assert kept[0] is next(c for c in kernel.configs if decode_mod._smem(c, args, consts) <= (144 << 10))


def test_pruning_never_leaves_nothing(monkeypatch):
    kernel = decode_mod._decode_attention_kernel
    args, consts = _decode_args(torch.float32)
    kept = _prune(kernel, monkeypatch, 1 << 10, args, consts, tuning=True)
    assert kept == [min(kernel.configs, key=lambda c: decode_mod._smem(c, args, consts))]


def test_patch_embed_fp32_first_config_is_dropped_where_it_does_not_fit(monkeypatch):
    kernel = patch_mod._patch_embed_kernel
    args = {"px_ptr": _Arg(torch.float32), "w_ptr": _Arg(torch.float32)}
    assert patch_mod._smem(kernel.configs[0], args, {}) == 192 << 10
    kept = _prune(kernel, monkeypatch, 164 << 10, args, {}, tuning=False)
    assert kept and kept[0] is not kernel.configs[0]


@pytest.mark.parametrize(
    "kernel",
    [
        attention_mod._attention_kernel,
        decode_mod._decode_attention_kernel,
        norm_linear_mod._norm_linear_kernel,
        patch_mod._patch_embed_kernel,
    ],
)
def test_every_tiled_kernel_prunes_by_shared_memory(kernel):
    assert kernel.early_config_prune is not None and len(kernel.configs) > 1


def test_on_the_cpu_nothing_is_limited():
    assert _triton.smem_limit(torch.device("cpu")) > 1 << 40
