"""Loading XComposer2-4KHD folders: pickle shards or their safetensors conversion give the same model; every tensor
is checked by name and shape (the sizes config.json lacks are read from the shapes), and a bad one is named."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from hovle.errors import ConfigError, WeightsError
from hovle.families.xcomposer.config import XComposerConfig
from hovle.families.xcomposer.weights import expected_tensors, load_weights
from hovle.loaders.convert import to_safetensors


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sizes_come_from_config_and_shapes(xc_path):
    cfg = XComposerConfig.from_dir(xc_path)
    assert cfg.vision.hidden_size == 128 and cfg.vision.num_layers == 2 and cfg.vision.grid == 24
    assert cfg.lora_ranks == {"wqkv": 4, "wo": 8, "w1": 8, "w3": 8, "w2": 8}
    assert cfg.llm.rope.theta == 1e6 and cfg.llm.rope.scaling is None and cfg.llm.num_kv_heads == 2


def test_the_converted_folder_loads_the_same_tensors(xc_path, tmp_path):
    out = tmp_path / "converted"
    done = subprocess.run(
        [sys.executable, "-m", "hovle", "convert", "--model", str(xc_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not list(out.glob("*.bin")) and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.model").read_bytes() == (xc_path / "tokenizer.model").read_bytes()
    cfg = XComposerConfig.from_dir(xc_path)
    a, b = load_weights(xc_path, cfg, dtype=torch.bfloat16), load_weights(out, cfg, dtype=torch.bfloat16)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(WeightsError, match="no pytorch_model.bin"):
        to_safetensors(out, tmp_path / "again")


def _edit_shard(folder, edit):
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    for fname in sorted(set(index["weight_map"].values())):
        state = torch.load(folder / fname, weights_only=True)
        if edit(state):
            torch.save(state, folder / fname)
            return


def test_a_missing_plora_tensor_is_named(xc_path, tmp_path):
    folder = _copy(xc_path, tmp_path / "m")
    name = "model.layers.1.feed_forward.w2.Plora_B.weight"
    _edit_shard(folder, lambda s: s.pop(name, None) is not None)
    with pytest.raises(WeightsError, match="weight_map puts tensor 'model.layers.1.feed_forward.w2.Plora_B.weight'"):
        load_weights(folder, XComposerConfig.from_dir(folder))


def test_a_rank_that_differs_between_layers_is_named(xc_path, tmp_path):
    folder = _copy(xc_path, tmp_path / "r")
    name = "model.layers.1.attention.wo.Plora_A.weight"

    def edit(state):
        if name in state:
            state[name] = torch.zeros(3, state[name].shape[1], dtype=torch.bfloat16)
            return True
        return False

    _edit_shard(folder, edit)
    with pytest.raises(WeightsError, match=r"wrong shape.*wo\.Plora_A.*\[3, 128\], expected \[8, 128\]"):
        load_weights(folder, XComposerConfig.from_dir(folder))


def test_unsupported_config_values_are_named(xc_path, tmp_path):
    folder = _copy(xc_path, tmp_path / "c")
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "bias": True}))
    with pytest.raises(ConfigError, match="'bias' = true"):
        XComposerConfig.from_dir(folder)


def test_expected_names_cover_the_release_layout(xc_path):
    names = expected_tensors(XComposerConfig.from_dir(xc_path))
    assert "plora_glb_GN" in names and names["plora_sub_GN"] == (1, 1, 1, 512)
    assert names["vit.vision_tower.vision_model.embeddings.position_embedding.weight"] == (577, 128)
    assert sum("Plora_A" in n for n in names) == 2 * 5
