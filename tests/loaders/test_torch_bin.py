"""PyTorch pickle checkpoints: read with weights_only (anything else refused by name), strictly checked, loaded
tensor by tensor; a folder with both forms is read from its safetensors."""

import json
import os
import pickle

import pytest
import torch

from hovle.errors import WeightsError
from hovle.loaders.weights import load_weights, validate_checkpoint

EXPECTED = {"a.weight": (4, 3), "b.bias": (5,), "c": (2, 2, 2)}


def _tensors(gen):
    return {name: torch.randn(*shape, generator=gen) for name, shape in EXPECTED.items()}


def _write_shards(folder, tensors, dtype=torch.float32):
    names = list(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    for fname, keys in shards.items():
        torch.save({k: tensors[k].to(dtype) for k in keys}, folder / fname)
    weight_map = {k: fname for fname, keys in shards.items() for k in keys}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_bin_loads_every_tensor_exactly(tmp_path):
    tensors = _tensors(torch.Generator().manual_seed(0))
    _write_shards(tmp_path, {k: v.to(torch.bfloat16) for k, v in tensors.items()}, torch.bfloat16)
    infos = validate_checkpoint(tmp_path, EXPECTED)
    assert {i.dtype for i in infos.values()} == {"BF16"} and infos["c"].file.name.endswith("00002.bin")
    loaded = load_weights(tmp_path, EXPECTED, frozenset({"b.bias"}), dtype=torch.float32)
    assert set(loaded) == {"a.weight", "c"}
    for k in loaded:
        assert torch.equal(loaded[k], tensors[k].to(torch.bfloat16).float())


def test_legacy_format_loads(tmp_path):
    tensors = _tensors(torch.Generator().manual_seed(5))
    torch.save(tensors, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert all(torch.equal(v, tensors[k]) for k, v in load_weights(tmp_path, EXPECTED).items())


def test_single_bin_with_a_prefix_renamed_and_buffers_ignored(tmp_path):
    tensors = _tensors(torch.Generator().manual_seed(1))
    state = {"vle." + k: v for k, v in tensors.items()} | {"vle.rotary.inv_freq": torch.ones(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_weights(
        tmp_path, EXPECTED, rename=lambda n: n.removeprefix("vle."), ignored=lambda n: n.endswith("inv_freq")
    )
    assert all(torch.equal(loaded[k], tensors[k]) for k in EXPECTED)
    with pytest.raises(WeightsError, match="unexpected tensor.*inv_freq"):
        load_weights(tmp_path, EXPECTED, rename=lambda n: n.removeprefix("vle."))


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_needs_more_than_tensors_is_refused_by_name(tmp_path, legacy):
    if legacy:
        with open(tmp_path / "pytorch_model.bin", "wb") as fh:
            pickle.dump({"a.weight": Payload()}, fh)
    else:
        torch.save({"a.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin: refused: it needs more than tensors"):
        validate_checkpoint(tmp_path, EXPECTED)


@pytest.mark.parametrize(
    "state, words",
    [
        ([torch.zeros(1)], "expected a dict"),
        ({"a.weight": torch.zeros(4, 3, dtype=torch.int32)}, "dtype torch.int32"),
        ({"a.weight": torch.zeros(4, 4)}, "wrong shape.*'a.weight'"),
    ],
)
def test_bad_contents_are_named(tmp_path, state, words):
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=words):
        validate_checkpoint(tmp_path, {"a.weight": (4, 3)})


def test_truncated_bin_and_missing_shard(tmp_path):
    tensors = _tensors(torch.Generator().manual_seed(2))
    _write_shards(tmp_path, tensors)
    shard = tmp_path / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(WeightsError, match="00002-of-00002.bin: cannot be read"):
        validate_checkpoint(tmp_path, EXPECTED)
    shard.unlink()
    with pytest.raises(WeightsError, match="which is missing"):
        validate_checkpoint(tmp_path, EXPECTED)


def test_nan_in_a_bin_tensor_is_refused(tmp_path):
    tensors = _tensors(torch.Generator().manual_seed(3))
    tensors["c"][0, 0, 0] = float("nan")
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="'c'.*NaN"):
        load_weights(tmp_path, EXPECTED)


def test_safetensors_wins_over_bin(tmp_path):
    from safetensors.torch import save_file

    tensors = _tensors(torch.Generator().manual_seed(4))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    torch.save({"junk": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    assert all(torch.equal(v, tensors[k]) for k, v in load_weights(tmp_path, EXPECTED).items())
