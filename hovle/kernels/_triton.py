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


def tuning_configs(configs: list) -> list:
    """The autotuning list of a tiled kernel: all of it, or only its first entry (a sound default) under the
    interpreter and with HOVLE_TRITON_AUTOTUNE=0 (the GPU test runs: every config costs a compile, and the kernel
    tests check each config's correctness on their own)."""
    return configs[:1] if interpreting() or os.environ.get("HOVLE_TRITON_AUTOTUNE", "1") == "0" else configs


def triton_usable(device_type: str) -> bool:
    """Whether Triton kernels can run on tensors of `device_type` in this process."""
    return HAS_TRITON and (device_type == "cuda" or (device_type == "cpu" and interpreting()))
