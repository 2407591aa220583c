"""config.json parsing: every UNCERTAIN value is read from the file; unsupported values fail with clear errors."""

import copy
import json

import pytest

from hovle import ConfigError, Engine, HoVLEConfig, WeightsError
from hovle.default_model.cases import make_checkpoint
from hovle.default_model.folder import config_dict


def test_real_hovle_and_hd_configs_parse_with_the_spec_values():
    for variant, loc in (("hovle", "pre"), ("hovle-hd", "post")):
        cfg = HoVLEConfig.from_dict(config_dict(variant))
        assert cfg.embedding.pixel_shuffle_loc == loc and cfg.is_hd == (loc == "post")
        assert (cfg.tokens_per_tile, cfg.patches_per_tile, cfg.patch_grid) == (256, 1024, 32)
        assert cfg.llm.stack.num_layers == 24 and cfg.embedding.stack.num_layers == 8
        assert cfg.llm.stack.head_dim == 128 and cfg.llm.stack.num_kv_heads == 8
        assert cfg.llm.stack.rope.scaling == "dynamic" and cfg.llm.stack.rope.factor == 2.0


def test_uncertain_values_come_from_the_file():
    raw = config_dict("hovle")
    raw["embedding_config"].update(
        rope_theta=12345.0,
        rms_norm_eps=3e-6,
        max_position_embeddings=777,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_scaling=None,
    )
    raw.update(use_thumbnail=False, max_dynamic_patch=7, normalize_encoder_output=True, force_image_size=None)
    cfg = HoVLEConfig.from_dict(raw)
    e = cfg.embedding.stack
    assert (e.rope.theta, e.rms_norm_eps, e.rope.max_position_embeddings, e.rope.scaling) == (12345.0, 3e-6, 777, None)
    assert (e.num_heads, e.num_kv_heads, e.head_dim) == (32, 8, 64)
    assert (cfg.use_thumbnail, cfg.max_dynamic_patch, cfg.normalize_encoder_output) == (False, 7, True)
    assert cfg.image_size == 448  # force_image_size null falls back to embedding_config.image_size


def _edit(path: str, value):
    raw = config_dict("hovle")
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


BAD = [
    ("template", "vicuna_v1", "template"),
    ("template", KeyError, "template"),
    ("embedding_config.hidden_act", "gelu", "hidden_act"),
    ("embedding_config.attention_bias", True, "attention_bias"),
    ("embedding_config.pixel_shuffle_loc", "middle", "pixel_shuffle_loc"),
    ("embedding_config.downsample_ratio", 0.25, "downsample_ratio"),
    ("embedding_config.num_key_value_heads", 3, "num_key_value_heads"),
    ("embedding_config.hidden_size", "2048", "hidden_size"),
    ("embedding_config.patch_size", 15, "patch_size"),
    ("embedding_config.rope_scaling", {"type": "yarn", "factor": 2.0}, "yarn"),
    ("embedding_config.rope_scaling", {"type": "dynamic", "factor": 0.5}, "factor"),
    ("embedding_config.special_token_maps", {"<x>": 1}, "special_token_maps"),
    ("embedding_config.img_context_token_id", 10**6, "img_context_token_id"),
    ("llm_config.architectures", ["LlamaForCausalLM"], "architectures"),
    ("llm_config.tie_word_embeddings", True, "tie_word_embeddings"),
    ("llm_config.bias", True, "bias"),
    ("llm_config.hidden_size", 1024, "hidden_size"),
    ("llm_config.vocab_size", 1000, "vocab"),
    ("llm_config.num_hidden_layers", 0, "num_hidden_layers"),
    ("llm_config", KeyError, "llm_config"),
    ("use_llm_lora", 8, "use_llm_lora"),
    ("max_dynamic_patch", 0, "max_dynamic_patch"),
]


@pytest.mark.parametrize("path, value, match", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_unsupported_config_values_raise_naming_the_key(path, value, match):
    with pytest.raises(ConfigError, match=match):
        HoVLEConfig.from_dict(_edit(path, value))


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json: not found"):
        HoVLEConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HoVLEConfig.from_dir(tmp_path)


def test_failed_load_leaves_nothing_behind(tmp_path_factory):
    """A truncated last shard fails the load up front: no engine, no files written, the checkpoint untouched."""
    src = make_checkpoint(tmp_path_factory.mktemp("ok"), "pre")
    bad = tmp_path_factory.mktemp("bad") / "ckpt"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    shards = sorted(bad.glob("model-*.safetensors"))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-100])
    before = {f.name: f.stat().st_mtime_ns for f in bad.iterdir()}
    with pytest.raises(WeightsError, match=shards[-1].name):
        Engine.from_pretrained(bad, device="cpu")
    assert {f.name: f.stat().st_mtime_ns for f in bad.iterdir()} == before


def test_config_mismatching_tokenizer_files_is_rejected(tmp_path_factory):
    src = make_checkpoint(tmp_path_factory.mktemp("tok"), "pre")
    raw = json.loads((src / "config.json").read_text())
    wrong = copy.deepcopy(raw)
    wrong["embedding_config"]["img_context_token_id"] = raw["embedding_config"]["img_context_token_id"] - 1
    (src / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        Engine.from_pretrained(src, device="cpu")
