"""Triton when it is installed; otherwise stand-ins so the kernel files still import (their refs keep working).

`HAS_TRITON` tells whether the Triton launchers can run. Nothing here touches CUDA: on a machine without a GPU the
kernels run through Triton's interpreter when TRITON_INTERPRET=1 is set before triton is first imported.
"""

import os

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _Stub:
        """Decorators become no-ops and annotations resolve, so `@triton.jit def ...` still defines a function."""

        constexpr = int

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_, **__):
            return lambda f: f

        @staticmethod
        def heuristics(*_, **__):
            return lambda f: f

        @staticmethod
        def Config(*args, **kwargs):  # noqa: N802 - mirrors triton.Config
            return (args, kwargs)

        @staticmethod
        def cdiv(a, b):
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n):
            return 1 << (max(1, n) - 1).bit_length()

    triton = tl = _Stub()


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotuning() -> bool:
    """False under the interpreter and with HOVLE_TRITON_AUTOTUNE=0 (the GPU test runs: every config costs a
    compile, and the kernel tests check each config's correctness on their own): then a tiled kernel runs the first
    of its configs that fits the device."""
    return not interpreting() and os.environ.get("HOVLE_TRITON_AUTOTUNE", "1") != "0"


def tuning_configs(configs: list) -> list:
    """The autotuning list of a tiled kernel, best default first. Pair it with `fitting_configs` as the kernel's
    early_config_prune: that drops what does not fit in shared memory and, when not autotuning, keeps one."""
    return list(configs)


def smem_limit(device) -> int:
    """Shared memory one program may use on `device` (the opt-in maximum on CUDA); unlimited elsewhere."""
    if getattr(device, "type", device) != "cuda":
        return 1 << 62
    import torch

    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block)


SMEM_MARGIN = 16 << 10  # scratch Triton adds beyond the pipelined tiles (layout conversions, reductions)


def fitting_configs(smem_bytes, then=None):
    """An early_config_prune: the configs whose pipelined tiles, `smem_bytes(config, named_args, constexprs)`, fit
    the device's shared memory (for the arguments' dtypes: fp32 tiles are twice bf16's), in their order; never
    none (the smallest stays). Not autotuning: the first of them only. `then` prunes further, before that."""

    def prune(configs: list, named_args: dict, **kwargs) -> list:
        device = next(t.device for t in named_args.values() if hasattr(t, "device"))
        room = smem_limit(device) - SMEM_MARGIN
        cost = {id(c): smem_bytes(c, named_args, kwargs) for c in configs}
        kept = [c for c in configs if cost[id(c)] <= room] or [min(configs, key=lambda c: cost[id(c)])]
        kept = then(kept, named_args, **kwargs) if then is not None else kept
        return kept if autotuning() else kept[:1]

    return prune


def warps(elements: int, per_warp: int = 512, most: int = 8) -> int:
    """num_warps of a row-wise kernel over `elements` values: about one warp per `per_warp` of them, rounded down to
    a power of two in [1, most] (Triton needs a power of two)."""
    n = max(1, min(most, elements // per_warp))
    return 1 << (n.bit_length() - 1)


def triton_usable(device_type: str) -> bool:
    """Whether Triton kernels can run on tensors of `device_type` in this process. "meta" tensors pass too: the ops'
    fake implementations give their output shapes and nothing launches (benchmarks/ledger.py books a decode step
    so)."""
    return HAS_TRITON and (device_type in ("cuda", "meta") or (device_type == "cpu" and interpreting()))
