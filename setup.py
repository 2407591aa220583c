"""Build script: the pure-Python packages always; native extensions from csrc/ only where they can be built.

Installing must work on a machine with no compiler toolchain and no CUDA: every extension is optional, a failed
build only prints a warning, and the engine falls back to its PyTorch / PIL paths without it.

    hovle.kernels._native              csrc/*.cpp with pybind11 (CPU image preprocessing), whenever a C++17
                                       compiler works
    hovle/kernels/_preprocess_cuda.so  csrc/preprocess_cuda.cu with plain nvcc, loaded through ctypes; only when nvcc
                                       is found (PATH or CUDA_HOME) and HOVLE_BUILD_CUDA is not "0"
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-shared",
    "-Xcompiler",
    "-fPIC",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=compute_90",  # PTX, so GPUs newer than sm_90 can JIT it
]


def warn(message: str) -> None:
    print(f"setup.py: WARNING: {message}", file=sys.stderr, flush=True)


def native_extensions() -> list:
    """hovle.kernels._native from every csrc/*.cpp (none: nothing to build)."""
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    if not sources:
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        warn("pybind11 is not installed, so hovle.kernels._native is not built; images are preprocessed with PIL")
        return []
    # -ffp-contract=off: the float normalisation must round like torch (no fused multiply-adds).
    unix = sys.platform != "win32"
    compile_args = ["-O3", "-ffp-contract=off", "-pthread"] if unix else ["/O2", "/fp:precise"]
    depends = [str(p.relative_to(ROOT)) for p in CSRC.glob("*.h")]
    ext = Pybind11Extension(
        "hovle.kernels._native",
        sources,
        depends=depends,
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=["-pthread"] if unix else [],
    )
    return [ext]


class BuildExt(build_ext):
    """build_ext where each extension may fail with a warning, plus the optional nvcc-built CUDA library."""

    failed: set = set()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - no compiler, old compiler, missing headers: all fall back to Python
            warn(f"could not build {ext.name} ({type(e).__name__}: {e}); images are preprocessed with PIL")
            self.failed.add(ext.name)

    def build_extensions(self):
        super().build_extensions()
        # Forget what failed, so that editable installs do not try to copy a library that was never built.
        self.extensions = [e for e in self.extensions if e.name not in self.failed]

    def run(self):
        super().run()
        self.build_cuda()
        built = any(Path(self.get_ext_fullpath(e.name)).exists() for e in self.extensions)
        print(
            f"setup.py: image preprocessing path: {'native C++ (hovle.kernels._native)' if built else 'Python / PIL'}"
            f"{', CUDA library built' if self.cuda_built else ''}",
            flush=True,
        )

    cuda_built = False

    def build_cuda(self) -> None:
        source = CSRC / "preprocess_cuda.cu"
        if not source.exists() or os.environ.get("HOVLE_BUILD_CUDA", "1") == "0":
            return
        nvcc = shutil.which("nvcc") or next(
            (str(p) for p in [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"] if p.exists()),
            None,
        )
        if nvcc is None:
            return
        out_dir = (ROOT if self.inplace else Path(self.build_lib)) / "hovle" / "kernels"
        target = out_dir / "_preprocess_cuda.so"
        inputs = [source, *CSRC.glob("*.h")]
        if target.exists() and all(target.stat().st_mtime >= p.stat().st_mtime for p in inputs):
            self.cuda_built = True
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        cmd = [nvcc, *NVCC_FLAGS, "-I", str(CSRC), str(source), "-o", str(target)]
        print("setup.py:", " ".join(cmd), flush=True)
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            self.cuda_built = True
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            warn(f"could not build {target.name} with nvcc; the CUDA preprocessing is unavailable:\n{detail[-2000:]}")


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildExt})
