"""Build script: the pure-Python packages always; native extensions from csrc/ only where they can be built.

Installing must work on a machine with no compiler toolchain and no CUDA: every extension is optional and the
engine falls back to its PyTorch paths without it.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def native_extensions() -> list:
    """Extensions for the sources present in csrc/ (none yet: the native preprocessing lands with its issue)."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not sources:
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("setup.py: pybind11 not available, skipping the native extension")
        return []
    return [Pybind11Extension("kernels._native", sources, cxx_std=17)]


setup(ext_modules=native_extensions())
