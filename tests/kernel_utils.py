"""Shared pieces of the kernel tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Fresh outputs start as NaN (integers as -7), so an element a kernel forgets to write cannot pass by luck.

    Autouse in every test module that imports it.
    """
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-7)

    monkeypatch.setattr(torch, "empty", empty)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so equality is exact (NaN == NaN, -0.0 != 0.0)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])
