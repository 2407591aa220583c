"""A tiny random InternLM-XComposer2-4KHD in the released layout (bf16 pickle shards, real config schema), written
once per test session, and an fp32 CPU engine on it per module."""

import pytest
import torch


@pytest.fixture(scope="session")
def xc_path(tmp_path_factory):
    from hovle.default_model.xcomposer import write_xcomposer_model

    return write_xcomposer_model(tmp_path_factory.mktemp("xcomposer") / "xc-tiny")


@pytest.fixture(scope="module")
def xc_engine(xc_path):
    from hovle import Engine

    engine = Engine.from_pretrained(xc_path, device="cpu", dtype=torch.float32, max_context=8192)
    yield engine
    engine.close()
