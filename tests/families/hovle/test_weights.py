"""Checkpoint layout, strict validation and loading, and the streaming writer, on a tiny random model (CPU)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hovle.default_model.checkpoint import write_checkpoint
from hovle.errors import WeightsError
from hovle.families.hovle.config import HoVLEConfig
from hovle.families.hovle.weights import UNUSED_TENSORS, expected_tensors, load_weights, validate_checkpoint
from hovle.loaders import weights
from hovle.loaders.weights import INDEX_FILE, checkpoint_files

SHARD_BYTES = 300_000  # the tiny model is ~1 MB of F32, so this gives >= 3 shards


# fmt: off
def tiny_config_dict() -> dict:
    stack = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "hidden_act": "silu"}
    emb = {**stack, "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 4096, "image_size": 56,
           "patch_size": 14, "num_channels": 3, "downsample_ratio": 0.5, "pixel_shuffle_loc": "pre",
           "img_context_token_id": 290, "llm_vocab_size": 300, "llm_hidden_size": 64}
    llm = {**stack, "architectures": ["InternLM2ForCausalLM"], "vocab_size": 300, "rope_theta": 1000000.0,
           "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 32768, "bos_token_id": 1,
           "eos_token_id": 2, "pad_token_id": 2, "bias": False, "tie_word_embeddings": False}
    return {"embedding_config": emb, "llm_config": llm, "template": "internlm2-chat", "downsample_ratio": 0.5,
            "force_image_size": 56, "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": 1,
            "max_dynamic_patch": 6, "normalize_encoder_output": False}
# fmt: on


def real_config_dict() -> dict:
    raw = tiny_config_dict()
    for key in ("embedding_config", "llm_config"):
        raw[key].update(hidden_size=2048, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=8)
    raw["embedding_config"].update(
        num_hidden_layers=8, image_size=448, img_context_token_id=92546, llm_vocab_size=92553, llm_hidden_size=2048
    )
    raw["llm_config"].update(num_hidden_layers=24, vocab_size=92553)
    raw["force_image_size"] = 448
    return raw


def random_tensors(cfg: HoVLEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in expected_tensors(cfg).items()}


@pytest.fixture
def cfg() -> HoVLEConfig:
    return HoVLEConfig.from_dict(tiny_config_dict())


@pytest.fixture
def tensors(cfg) -> dict[str, torch.Tensor]:
    return random_tensors(cfg, seed=1234)


@pytest.fixture
def ckpt(tmp_path, tensors) -> Path:
    return write_checkpoint(tmp_path / "ckpt", tiny_config_dict(), tensors, max_shard_bytes=SHARD_BYTES)


def read_index(ckpt: Path) -> dict:
    return json.loads((ckpt / INDEX_FILE).read_text())


def raises_naming(*parts: object):
    """pytest.raises(WeightsError) whose message must contain every part (tensor names, file names)."""
    return pytest.raises(WeightsError, match="(?s)" + "".join(f"(?=.*{re.escape(str(p))})" for p in parts))


def test_expected_tensors_reproduce_the_released_totals():
    shapes = expected_tensors(HoVLEConfig.from_dict(real_config_dict()))
    numel = {name: torch.Size(shape).numel() for name, shape in shapes.items()}
    assert len(shapes) == 236  # docs/hovle.md §5.1
    assert sum(numel.values()) == 2_606_327_808 and 4 * sum(numel.values()) == 10_425_311_232  # docs/hovle.md §5.3
    assert shapes["embedding_model.pixel_shuffle_proj.0.weight"] == (2048, 8192)
    assert shapes["embedding_model.vision_embeddings.position_embedding"] == (1, 1025, 2048)
    assert shapes["language_model.model.layers.23.attention.wqkv.weight"] == (4096, 2048)
    assert UNUSED_TENSORS <= shapes.keys()


def test_sharded_round_trip_is_bit_exact(ckpt, cfg, tensors):
    files = checkpoint_files(ckpt)
    assert len(files) >= 3
    names = [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert [f.name for f in files] == names
    index = read_index(ckpt)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    assert list(index["weight_map"]) == sorted(tensors)
    assert json.loads((ckpt / "generation_config.json").read_text())["transformers_version"] == "4.37.2"
    assert HoVLEConfig.from_dir(ckpt) == cfg
    assert not [p for p in ckpt.parent.iterdir() if p.name != "ckpt"]  # temp dir renamed away
    loaded = load_weights(ckpt, cfg)
    assert loaded.keys() == tensors.keys() - UNUSED_TENSORS
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, tensors[name]), name


def test_single_file_round_trip_is_bit_exact(tmp_path, cfg, tensors):
    ckpt = write_checkpoint(tmp_path / "one", tiny_config_dict(), iter(tensors.items()), single_file=True)
    assert checkpoint_files(ckpt) == [ckpt / "model.safetensors"] and not (ckpt / INDEX_FILE).exists()
    loaded = load_weights(ckpt, cfg)
    assert all(torch.equal(t, tensors[name]) for name, t in loaded.items())


def test_bf16_load_rounds_like_to(ckpt, cfg, tensors):
    loaded = load_weights(ckpt, cfg, dtype=torch.bfloat16)
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, tensors[name].to(torch.bfloat16)), name


def test_writer_stores_any_layout_as_contiguous_f32(tmp_path, cfg, tensors):
    mixed, proj = dict(tensors), "embedding_model.pixel_shuffle_proj."
    mixed["language_model.output.weight"] = tensors["language_model.output.weight"].to(torch.float16)
    mixed[proj + "2.weight"] = tensors[proj + "2.weight"].T.contiguous().T  # non-contiguous
    mixed[proj + "0.bias"] = mixed[proj + "2.bias"] = torch.randn(64)  # the same tensor under two names
    mixed["language_model.model.norm.weight"] = torch.randn(3, 64)[1]  # a view into a larger storage
    ckpt = write_checkpoint(tmp_path / "mixed", tiny_config_dict(), mixed, max_shard_bytes=SHARD_BYTES)
    assert {i.dtype for i in validate_checkpoint(ckpt, cfg).values()} == {"F32"}
    for name, tensor in load_weights(ckpt, cfg).items():
        assert torch.equal(tensor, mixed[name].float()), name


def test_progress_bar_when_forced(ckpt, cfg, capsys):
    load_weights(ckpt, cfg, progress=True)
    assert "MB/s" in capsys.readouterr().err
    load_weights(ckpt, cfg)  # auto: small and not a TTY -> silent
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("single_file", [False, True])
@pytest.mark.parametrize("name", ["language_model.model.layers.1.feed_forward.w2.weight", *sorted(UNUSED_TENSORS)])
def test_missing_tensor(tmp_path, cfg, tensors, name, single_file):  # unused tensors are required all the same
    del tensors[name]
    ckpt = write_checkpoint(
        tmp_path / "c", tiny_config_dict(), tensors, max_shard_bytes=SHARD_BYTES, single_file=single_file
    )
    with raises_naming(name, "model.safetensors" if single_file else "model-00001-of-"):
        load_weights(ckpt, cfg)


def test_unexpected_tensor(tmp_path, cfg, tensors):
    tensors["embedding_model.special_text_embeddings.weight"] = torch.randn(3, 64)
    ckpt = write_checkpoint(tmp_path / "c", tiny_config_dict(), tensors, max_shard_bytes=SHARD_BYTES)
    shard = read_index(ckpt)["weight_map"]["embedding_model.special_text_embeddings.weight"]
    with raises_naming("embedding_model.special_text_embeddings.weight", shard):
        load_weights(ckpt, cfg)


def test_wrong_shape(tmp_path, cfg, tensors):
    name = "embedding_model.encoder.1.attention.wo.weight"
    tensors[name] = torch.randn(64, 32)
    ckpt = write_checkpoint(tmp_path / "c", tiny_config_dict(), tensors, max_shard_bytes=SHARD_BYTES)
    shard = read_index(ckpt)["weight_map"][name]
    with raises_naming(name, shard, "[64, 32]", "[64, 64]"):
        load_weights(ckpt, cfg)


def test_wrong_dtype(tmp_path, cfg, tensors):
    name = "language_model.model.norm.weight"
    tensors[name] = torch.randint(-100, 100, (64,), dtype=torch.int32)
    (tmp_path / "c").mkdir()
    save_file(tensors, str(tmp_path / "c" / "model.safetensors"))
    with raises_naming(name, "model.safetensors", "I32", "F32"):
        load_weights(tmp_path / "c", cfg)


def test_truncated_last_shard_fails_before_reading_data(ckpt, cfg, monkeypatch):
    last = checkpoint_files(ckpt)[-1]
    os.truncate(last, last.stat().st_size // 2)
    calls = []
    monkeypatch.setattr(weights, "safe_open", lambda *a, **k: calls.append(a) or pytest.fail("data was read"))
    with raises_naming("TRUNCATED", last.name, "tensor '"):
        load_weights(ckpt, cfg)
    assert calls == []


@pytest.mark.parametrize("where", ["length", "json"])
def test_corrupt_header(ckpt, cfg, where):
    shard = checkpoint_files(ckpt)[1]
    data = bytearray(shard.read_bytes())
    garbage = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    start = 0 if where == "length" else 8  # garbage length field, or garbage where the JSON should be
    data[start : start + 64] = bytes(garbage.tolist())
    shard.write_bytes(bytes(data))
    with raises_naming(shard.name, "header"):
        load_weights(ckpt, cfg)


def _rewrite_header(file: Path, edit) -> None:
    blob = file.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n :])


@pytest.mark.parametrize("kind", ["overlap", "length"])
def test_bad_data_offsets(ckpt, cfg, kind):
    shard = checkpoint_files(ckpt)[0]

    def edit(header):
        first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
        if kind == "overlap":  # same span, so the length still matches the shape
            header[second]["data_offsets"] = header[first]["data_offsets"]
            header[second]["shape"] = header[first]["shape"]
        else:
            header[first]["data_offsets"][1] += 4

    _rewrite_header(shard, edit)
    with raises_naming(shard.name, "tensor", "overlap" if kind == "overlap" else "needs"):
        load_weights(ckpt, cfg)


def test_read_error_is_wrapped_and_nothing_returned(ckpt, cfg, monkeypatch):
    real = weights.safe_open
    opened = []

    def flaky(file, **kwargs):
        opened.append(file)
        if len(opened) == 2:
            raise RuntimeError("simulated I/O error")
        return real(file, **kwargs)

    monkeypatch.setattr(weights, "safe_open", flaky)
    with pytest.raises(WeightsError, match="simulated I/O error") as err:
        load_weights(ckpt, cfg)
    assert Path(opened[1]).name in str(err.value) and len(opened) == 2


def test_index_names_missing_file(ckpt, cfg):
    index = read_index(ckpt)
    name = "language_model.output.weight"
    index["weight_map"][name] = "model-00009-of-00009.safetensors"
    (ckpt / INDEX_FILE).write_text(json.dumps(index))
    with raises_naming(name, "model-00009-of-00009.safetensors", INDEX_FILE):
        load_weights(ckpt, cfg)


def test_index_entry_whose_file_lacks_the_tensor(ckpt, cfg):
    index = read_index(ckpt)
    name = "embedding_model.vision_embeddings.patch_embedding.bias"
    wrong = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][name])
    index["weight_map"][name] = wrong
    (ckpt / INDEX_FILE).write_text(json.dumps(index))
    with raises_naming(name, wrong):
        load_weights(ckpt, cfg)


def test_invalid_index_json(ckpt, cfg):
    (ckpt / INDEX_FILE).write_text('{"metadata": {"total_size": 12}, "weight_map": {')
    with raises_naming(INDEX_FILE, "JSON"):
        load_weights(ckpt, cfg)


def test_writer_refuses_non_empty_destination(ckpt, tensors):
    with raises_naming(ckpt, "not empty"):
        write_checkpoint(ckpt, tiny_config_dict(), tensors)
    other = {**tiny_config_dict(), "use_thumbnail": False}
    write_checkpoint(ckpt, other, tensors, overwrite=True, extra_files={"added_tokens.json": "{}"})
    assert json.loads((ckpt / "config.json").read_text())["use_thumbnail"] is False
    assert (ckpt / "added_tokens.json").read_text() == "{}"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]


def test_writer_failure_leaves_nothing_behind(tmp_path, tensors):
    def failing():
        for i, item in enumerate(tensors.items()):
            if i == len(tensors) // 2:
                raise RuntimeError("generator failed midway")
            yield item

    with pytest.raises(RuntimeError, match="midway"):
        write_checkpoint(tmp_path / "ckpt", tiny_config_dict(), failing(), max_shard_bytes=SHARD_BYTES)
    assert list(tmp_path.iterdir()) == []


def test_writer_streams_shard_by_shard(tmp_path, tensors):
    def watched():
        for i, item in enumerate(tensors.items()):
            if i == len(tensors) - 1:  # before the last tensor, all but the last shard are already on disk
                assert len(list(tmp_path.glob(".ckpt.*.tmp/shard-*.part"))) >= 2
            yield item

    ckpt = write_checkpoint(tmp_path / "ckpt", tiny_config_dict(), watched(), max_shard_bytes=SHARD_BYTES)
    assert len(checkpoint_files(ckpt)) >= 3
