"""The decode step is safe to capture in a CUDA graph, checked on the CPU.

CUDA-graph capture fails (or, worse, bakes a stale value into the graph) when the captured code copies between
host and device, reads a device value on the host, or builds a tensor from Python values. A GPU is not needed to
see any of that: the step runs here on the "meta" device (standing in for the GPU) under a TorchFunctionMode that
flags, with the engine line that did it, every host read (.item(), .tolist(), bool(), ...), every copy between the
CPU and the device, every tensor built from Python values, every CPU tensor or Python list used as an index of a
device tensor, and every Python value assigned into a device tensor by indexing (CUDA stages such a value on the
host and copies it: exactly the `self.emb_pos[self.scratch] = 0` line that broke capture on the H200). The step is
the same function the engine captures (DecodeStep.forward), on the torch backend, in every selection mode.
"""

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from hovle.default_model.cases import make_checkpoint
from hovle.families.hovle.config import HoVLEConfig
from hovle.families.hovle.model import HoVLEModel
from hovle.families.hovle.weights import load_weights
from hovle.kernels import TORCH_OPS
from hovle.runtime.runner import ModelRunner

DEVICE = "meta"  # plays the GPU
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__complex__"}
FROM_PYTHON = {"tensor", "as_tensor", "asarray", "from_numpy", "new_tensor", "scalar_tensor"}
MOVES = {"to", "cuda", "copy_", "_to_copy", "pin_memory"}


def _on_device(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == DEVICE


def _from_host(x) -> bool:
    """A value that reaches the device from the host: a CPU tensor, a Python number, list or tuple of numbers."""
    if isinstance(x, torch.Tensor):
        return x.device.type != DEVICE
    if isinstance(x, (list, tuple)):
        return any(_from_host(y) or isinstance(y, (int, float, bool)) for y in x)
    return isinstance(x, (int, float, bool))


class HostDeviceTrap(TorchFunctionMode):
    """Records (engine file:line, what) for every operation a captured CUDA step may not do."""

    def __init__(self):
        super().__init__()
        self.violations: list[str] = []

    def _flag(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/hovle/" in f.filename]
        where = f"{frames[-1].filename.split('/main/')[-1]}:{frames[-1].lineno}" if frames else "?"
        self.violations.append(f"{where}: {what}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device = any(_on_device(t) for t in tensors)
        host = [t for t in tensors if not _on_device(t)]
        if name in FROM_PYTHON:
            self._flag(f"torch.{name}(...) builds a tensor from Python values")
        elif name in HOST_READS and device:
            self._flag(f".{name}() reads a device tensor on the host")
        elif name in MOVES and device and (host or _moves_to_host(args, kwargs)):
            self._flag(f".{name}() copies between the host and the device")
        elif name in ("__setitem__", "__getitem__") and _on_device(args[0]):
            self._check_indexing(name, args)
        elif device and host:
            self._flag(f"{name}() mixes CPU tensors {[tuple(t.shape) for t in host]} with device tensors")
        return func(*args, **kwargs)

    def _check_indexing(self, name: str, args) -> None:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(i, (list, torch.Tensor)) and _from_host(i) for i in index):
            self._flag(f"{name} with an index from the host (a Python list or CPU tensor)")
        if name == "__setitem__" and _from_host(args[2]):
            self._flag(f"__setitem__ of a Python value or CPU tensor into a device tensor: {args[2]!r}")


def _moves_to_host(args, kwargs) -> bool:
    target = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, (str, torch.device))]
    return any(torch.device(t).type == "cpu" for t in target)


def _runner(path, quirk: bool, vocab_limit):
    cfg = HoVLEConfig.from_dir(path)
    weights = {k: v.to(DEVICE) for k, v in load_weights(path, cfg, dtype=torch.float32, device="cpu").items()}
    model = HoVLEModel(cfg, weights, TORCH_OPS, "reference-quirk" if quirk else "natural")
    return ModelRunner(
        model,
        max_batch=4,
        num_pages=(16, 16),
        page_size=8,
        max_pages=(6, 6),
        cuda_graphs=False,
        vocab_limit=vocab_limit,
    )


def test_the_trap_catches_what_broke_capture():
    """The line that made every capture fail on the H200, and its kin, are flagged (the trap itself can fail)."""
    state, rows = torch.zeros(5, dtype=torch.int64, device=DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE)
    cases = {
        "state[4] = 0": lambda: state.__setitem__(4, 0),
        "state[rows] = 1": lambda: state.__setitem__(rows, 1),
        "state[[0, 1]]": lambda: state[[0, 1]],
        "torch.tensor": lambda: torch.tensor([1, 2], device=DEVICE),
        "tolist": lambda: state.tolist(),
        "copy_ from the CPU": lambda: state.copy_(torch.zeros(5, dtype=torch.int64)),
        "mix": lambda: state + torch.ones(5, dtype=torch.int64),
    }
    for what, fn in cases.items():
        trap = HostDeviceTrap()
        with trap:
            try:
                fn()
            except (RuntimeError, NotImplementedError):
                pass  # meta tensors hold no data to read
        assert trap.violations, f"{what} was not flagged"
    clean = HostDeviceTrap()
    with clean:
        state.index_copy_(0, rows, torch.where(rows == 4, 0, rows + 1))
        state[1:].fill_(3)
    assert not clean.violations, clean.violations


@pytest.mark.parametrize("variant, quirk", [("hovle", False), ("hovle-hd", False), ("hovle-hd", True)])
@pytest.mark.parametrize("penalty, greedy", [(False, True), (True, True), (False, False), (True, False)])
def test_decode_step_does_nothing_capture_forbids(tmp_path_factory, variant, quirk, penalty, greedy):
    path = make_checkpoint(tmp_path_factory.mktemp("capture"), "ckpt", variant)
    runner = _runner(path, quirk, vocab_limit=runner_vocab(path) - 3)
    rows = torch.arange(3, dtype=torch.int64).to(DEVICE)  # built outside the step, as the graph's static input
    uniform = torch.zeros(3, dtype=torch.float32).to(DEVICE)
    trap = HostDeviceTrap()
    with trap:
        out = runner.decoder.forward(rows, uniform, runner.capacity, penalty, greedy)
    assert out.shape == (2, 3) and out.device.type == DEVICE
    assert not trap.violations, "the decode step cannot be captured:\n" + "\n".join(trap.violations)


def runner_vocab(path) -> int:
    return HoVLEConfig.from_dir(path).llm.vocab_size
