"""The reference's view of a checkpoint: every tensor of the folder, and the InternLM2 layers' weights renamed and
split into transformers' Llama layout (the fused `wqkv` holds, per kv head, its query heads, then its key head, then
its value head)."""

import json

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig

EMB = "embedding_model."
LLM = "language_model."
UNUSED = {EMB + "vision_embeddings.class_embedding", LLM + "model.tok_embeddings.weight"}
LAYER_RENAME = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def load_tensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: sharded (model.safetensors.index.json) or a single model.safetensors."""
    try:
        with open(f"{path}/model.safetensors.index.json") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except FileNotFoundError:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(load_file(f"{path}/{shard}"))
    return tensors


def rope_parameters(c: dict) -> dict:
    """InternLM2 rope_theta / rope_scaling {"type", "factor"} -> transformers' rope_parameters."""
    scaling = c.get("rope_scaling") or {}
    kind = scaling.get("type", scaling.get("rope_type", "default"))
    if kind not in ("default", "linear", "dynamic"):
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    params = {"rope_type": kind, "rope_theta": float(c.get("rope_theta", 10000.0))}
    if kind != "default":
        params["factor"] = float(scaling["factor"])
    return params


def llama_config(c: dict, eps_default: float, max_pos_default: int, attn: str) -> LlamaConfig:
    sizes = {k: int(c[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    fixed = dict(attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation=attn)
    return LlamaConfig(
        **sizes,
        **fixed,
        vocab_size=int(c.get("vocab_size", c.get("llm_vocab_size", 1))),
        num_key_value_heads=int(c.get("num_key_value_heads", c["num_attention_heads"])),
        rms_norm_eps=float(c.get("rms_norm_eps", eps_default)),
        max_position_embeddings=int(c.get("max_position_embeddings", max_pos_default)),
        rope_parameters=rope_parameters(c),
    )


def split_wqkv(w: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Grouped fused layout (docs/hovle.md §4.2): per kv group, n_rep query heads, one key head, one value head."""
    n_rep = n_heads // n_kv
    w = w.view(n_kv, n_rep + 2, head_dim, -1)  # (Hkv, n_rep+2, D, hidden)
    q = w[:, :n_rep].reshape(n_heads * head_dim, -1)  # (Hkv*n_rep*D, hidden): query head g*n_rep+j
    return q, w[:, n_rep].reshape(n_kv * head_dim, -1), w[:, n_rep + 1].reshape(n_kv * head_dim, -1)


def take(tensors: dict, name: str) -> torch.Tensor:
    """Pops a checkpoint tensor, so whatever is left at the end is unexpected (strict loading)."""
    if name not in tensors:
        raise KeyError(f"checkpoint tensor {name!r} is missing")
    return tensors.pop(name)
