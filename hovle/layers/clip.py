"""A CLIP vision transformer (ViT-B/16, ViT-L/14, ...) as the encoder families use it, on the op table.

Pre-LN blocks: h = x + out_proj(attn(LN1(x))); x = h + fc2(act(fc1(LN2(h)))), bidirectional attention with q/k/v/o
biases and scale 1/sqrt(D), after `pre_layrnorm` over [CLS] + patch tokens + the learned position embedding. The
layers' output (`hidden_states[-1]` in transformers) is returned without `post_layernorm`; `post_norm` applies it
(VLE normalises every token, XComposer2-4KHD never does). Tensor names are transformers' CLIPVisionModel's under a
prefix (e.g. "vit.vision_tower.vision_model."); q, k and v are fused into one projection at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hovle.kernels import Ops

ACTS = {"quick_gelu": "quick", "gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


@dataclass(frozen=True)
class ClipVisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # a key of ACTS

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def clip_shapes(prefix: str, cfg: ClipVisionConfig, post_layernorm: bool = True) -> dict[str, tuple[int, ...]]:
    """Checkpoint names -> shapes of the vision model under `prefix` (post_layernorm: whether the file holds it)."""
    c, i, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    out = {
        "embeddings.class_embedding": (c,),
        "embeddings.patch_embedding.weight": (c, 3, p, p),
        "embeddings.position_embedding.weight": (cfg.grid * cfg.grid + 1, c),
        "pre_layrnorm.weight": (c,),
        "pre_layrnorm.bias": (c,),
    }
    if post_layernorm:
        out |= {"post_layernorm.weight": (c,), "post_layernorm.bias": (c,)}
    layer = {f"self_attn.{n}_proj.{k}": (c, c) if k == "weight" else (c,) for n in "qkvo" for k in ("weight", "bias")}
    layer = {k.replace("o_proj", "out_proj"): v for k, v in layer.items()}
    layer |= {f"layer_norm{n}.{k}": (c,) for n in (1, 2) for k in ("weight", "bias")}
    layer |= {"mlp.fc1.weight": (i, c), "mlp.fc1.bias": (i,), "mlp.fc2.weight": (c, i), "mlp.fc2.bias": (c,)}
    out |= {f"encoder.layers.{n}.{k}": s for n in range(cfg.num_layers) for k, s in layer.items()}
    return {prefix + k: v for k, v in out.items()}


@dataclass
class ClipLayer:
    ln1: tuple[torch.Tensor, torch.Tensor]  # (C,), (C,)
    wqkv: torch.Tensor  # (3C, C): q rows, then k, then v
    bqkv: torch.Tensor  # (3C,)
    wo: torch.Tensor  # (C, C)
    bo: torch.Tensor  # (C,)
    ln2: tuple[torch.Tensor, torch.Tensor]
    fc1: tuple[torch.Tensor, torch.Tensor]  # (I, C), (I,)
    fc2: tuple[torch.Tensor, torch.Tensor]  # (C, I), (C,)


def _take_layer(w: dict, p: str) -> ClipLayer:
    proj = [(w.pop(f"{p}self_attn.{n}_proj.weight"), w.pop(f"{p}self_attn.{n}_proj.bias")) for n in "qkv"]
    pair = lambda name: (w.pop(f"{p}{name}.weight"), w.pop(f"{p}{name}.bias"))  # noqa: E731
    return ClipLayer(
        ln1=pair("layer_norm1"),
        wqkv=torch.cat([wt for wt, _ in proj]),
        bqkv=torch.cat([b for _, b in proj]),
        wo=w.pop(f"{p}self_attn.out_proj.weight"),
        bo=w.pop(f"{p}self_attn.out_proj.bias"),
        ln2=pair("layer_norm2"),
        fc1=pair("mlp.fc1"),
        fc2=pair("mlp.fc2"),
    )


class ClipVision:
    def __init__(self, cfg: ClipVisionConfig, weights: dict, prefix: str, ops: Ops):
        """Moves the vision model's tensors (under `prefix`) out of `weights`; post_layernorm is kept if present."""
        if cfg.hidden_act not in ACTS:
            raise ValueError(f"CLIP hidden_act {cfg.hidden_act!r} is not one of {sorted(ACTS)}")
        self.cfg, self.ops, w, p = cfg, ops, weights, prefix
        self.act = ACTS[cfg.hidden_act]
        pos = w.pop(p + "embeddings.position_embedding.weight")  # (1 + G*G, C)
        self.cls = w.pop(p + "embeddings.class_embedding") + pos[0]  # (C,): the CLS token's input row
        self.pos = pos[1:].contiguous()  # (G*G, C)
        self.patch_w = ops.patch_weight_layout(w.pop(p + "embeddings.patch_embedding.weight"))
        self.patch_b = torch.zeros(cfg.hidden_size, dtype=pos.dtype, device=pos.device)  # CLIP's conv has no bias
        self.pre_norm = (w.pop(p + "pre_layrnorm.weight"), w.pop(p + "pre_layrnorm.bias"))
        post = p + "post_layernorm.weight"
        self.post = (w.pop(post), w.pop(p + "post_layernorm.bias")) if post in w else None
        self.layers = [_take_layer(w, f"{p}encoder.layers.{i}.") for i in range(cfg.num_layers)]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, 1 + G*G, C) output of the last layer ([CLS] first), no post norm."""
        n, c = pixels.shape[0], self.cfg.hidden_size
        patches = self.ops.patch_embed(pixels.to(self.patch_w.dtype), self.patch_w, self.patch_b, self.pos)  # (N,P,C)
        x = torch.cat((self.cls.expand(n, 1, c), patches), dim=1).reshape(-1, c)  # (N, 1+P, C) -> (N(1+P), C)
        eps = self.cfg.layer_norm_eps
        h = self.ops.layer_norm(x, *self.pre_norm, eps)[0]
        residual, out = None, h
        for layer in self.layers:
            normed, residual = self.ops.layer_norm(out, *layer.ln1, eps, residual)
            out = self._attention(normed, layer, n)
            normed, residual = self.ops.layer_norm(out, *layer.ln2, eps, residual)
            out = F.linear(self.ops.gelu(F.linear(normed, *layer.fc1), self.act), *layer.fc2)
        return (out + residual).view(n, -1, c)  # (N(1+P), C) -> (N, 1+P, C)

    def _attention(self, x: torch.Tensor, layer: ClipLayer, n: int) -> torch.Tensor:
        c, d = self.cfg.hidden_size, self.cfg.head_dim
        qkv = F.linear(x, layer.wqkv, layer.bqkv).view(n, -1, 3, c // d, d)  # (N L, 3C) -> (N, L, 3, H, D)
        o = self.ops.encoder_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # (N, L, H, D)
        return F.linear(o.reshape(-1, c), layer.wo, layer.bo)  # (N, L, H, D) -> (N L, C)

    def post_norm(self, h: torch.Tensor) -> torch.Tensor:
        """post_layernorm over every token of (..., C)."""
        if self.post is None:
            raise ValueError("this checkpoint has no post_layernorm")
        flat = h.reshape(-1, h.shape[-1])  # (..., C) -> (rows, C)
        return self.ops.layer_norm(flat, *self.post, self.cfg.layer_norm_eps)[0].view(h.shape)
