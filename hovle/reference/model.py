"""Independent HoVLE / HoVLE-HD reference for the engine's correctness tests (docs/hovle.md).

Only transformers' Llama classes and plain torch, never the engine. InternLM2 layers are Llama layers once the fused
`wqkv` is split (docs/hovle.md §4.2): each stack (embedding module, LLM) is LlamaDecoderLayers (eager attention)
with its own LlamaRotaryEmbedding and DynamicCache. One ReferenceHoVLE holds one sequence's state: build one per
sequence.

RoPE scaling vs InternLM2 (read from transformers' modeling_rope_utils.py): dynamic NTK recomputes inv_freq when
max(position_ids)+1 exceeds the largest length seen, base' = theta * (factor*L/max_pos - (factor-1)) ** (D/(D-2));
InternLM2 does the same with L = kv length (== max(pos)+1 for natural positions), cached keys keep their rotation
in both. Differences: base' is fp32 math here (L is a tensor) but fp64 in InternLM2 (last-bit inv_freq changes);
transformers resets to the original base when a later L < max_pos, InternLM2 never does (not reachable within one
growing sequence). Linear: inv_freq/factor here vs positions/factor there (equal for power-of-two factors).
"""

import inspect
import json
import math

import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from .weights import EMB, LAYER_RENAME, LLM, UNUSED, llama_config, load_tensors, split_wqkv, take

__all__ = ["EMB", "LAYER_RENAME", "LLM", "UNUSED", "ReferenceHoVLE", "load_tensors", "pixel_shuffle", "split_wqkv"]

HD_DECODE_MODES = ("natural", "reference-quirk")
# The decoder layer's cache keyword: `cache` since transformers 5.25 (`past_key_values` is deprecated there and
# removed in 5.40), `past_key_values` before. A wrong name would be swallowed by **kwargs and run without a cache.
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"


def pixel_shuffle(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """InternVL pixel shuffle with the final transpose ("v2"); x is (n, P, C) row-major patches."""
    n, p, c = x.shape
    g = math.isqrt(p)
    if g * g != p or g * ratio != int(g * ratio):
        raise ValueError(f"pixel_shuffle needs a square grid divisible by 1/ratio, got P={p}")
    gs, cs, cs2 = int(g * ratio), int(c / ratio), int(c / ratio**2)
    x = x.reshape(n, g, gs, cs)  # (n, rows, cols/2, 2C): horizontal pairs merged
    x = x.transpose(1, 2)  # (n, cols/2, rows, 2C)
    x = x.reshape(n, gs, gs, cs2)  # (n, cols/2, rows/2, 4C): vertical pairs merged
    x = x.transpose(1, 2)  # (n, rows/2, cols/2, 4C)
    return x.reshape(n, gs * gs, cs2)  # (n, P/4, 4C)


def causal_mask(q_len: int, past: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive (1, 1, q, past+q) mask; eager attention applies none when given None."""
    blocked = torch.ones(q_len, past + q_len, dtype=torch.bool, device=device).triu(past + 1)  # key after query
    mask = torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    return mask[None, None]  # (1, 1, q, past+q)


class _PromptOnly:
    """Cache stand-in for the HD quirk: attention sees the cached prompt K/V plus the new token's; stores nothing."""

    def __init__(self, cache: DynamicCache):
        self.cache = cache

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.cache.layers[layer_idx]
        return torch.cat([layer.keys, k], dim=-2), torch.cat([layer.values, v], dim=-2)


class Stack(torch.nn.Module):
    """InternLM2 layers as LlamaDecoderLayers with the stack's own rotary embedding (no final norm)."""

    def __init__(self, cfg: LlamaConfig, tensors: dict, prefix: str, dtype: torch.dtype, device):
        super().__init__()
        self.cfg = cfg
        with torch.device("meta"):
            self.layers = torch.nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        for i, layer in enumerate(self.layers):
            state = self._layer_state(tensors, f"{prefix}{i}.")
            layer.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=True, assign=True)
        self.rotary = LlamaRotaryEmbedding(cfg).to(device)

    def _layer_state(self, tensors: dict, prefix: str) -> dict:
        c = self.cfg
        wqkv = take(tensors, prefix + "attention.wqkv.weight")
        expected = ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim, c.hidden_size)
        if tuple(wqkv.shape) != expected:
            raise ValueError(f"{prefix}attention.wqkv.weight has shape {tuple(wqkv.shape)}, expected {expected}")
        q, k, v = split_wqkv(wqkv, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        state = {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v}
        state.update({new: take(tensors, prefix + old) for old, new in LAYER_RENAME.items()})
        return state

    def forward(self, x, positions: list[int], cache, mask, rope_len: int | None = None) -> torch.Tensor:
        """x (1, q, hidden); rope_len (quirk only) drives dynamic NTK as if the kv length were rope_len."""
        pos = torch.tensor([positions if rope_len is None else [*positions, rope_len - 1]], device=x.device)
        cos, sin = self.rotary(x, pos)  # (1, q[+1], D)
        cos_sin = (cos[:, : len(positions)], sin[:, : len(positions)])
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_embeddings=cos_sin, use_cache=True, **{CACHE_KW: cache})
        return x


class ReferenceHoVLE:
    """One sequence's reference state: prefill once, then decode_step / greedy."""

    def __init__(self, config: dict, tensors: dict, dtype=torch.float32, device="cpu", attn: str = "eager"):
        """attn: transformers' attention implementation ("eager" in the tests; "sdpa" for the benchmark and
        the training script)."""
        ec, lc = config["embedding_config"], config["llm_config"]
        self.dtype, self.device = dtype, torch.device(device)
        self.loc = ec.get("pixel_shuffle_loc", "pre")
        if self.loc not in ("pre", "post"):
            raise ValueError(f"pixel_shuffle_loc must be 'pre' or 'post', got {self.loc!r}")
        self.ratio = float(config.get("downsample_ratio", ec.get("downsample_ratio", 0.5)))
        self.normalize = bool(config.get("normalize_encoder_output", False))
        self.img_context_id = int(ec["img_context_token_id"])
        self.patch = int(ec["patch_size"])
        self.image_size = int(config.get("force_image_size") or ec["image_size"])
        self.emb = Stack(llama_config(ec, 1e-5, 4096, attn), tensors, EMB + "encoder.", dtype, self.device)
        self.llm = Stack(llama_config(lc, 1e-6, 2048, attn), tensors, LLM + "model.layers.", dtype, self.device)
        self.norm = LlamaRMSNorm(lc["hidden_size"], eps=self.llm.cfg.rms_norm_eps).to(self.device, dtype)
        self.norm.weight.data.copy_(take(tensors, LLM + "model.norm.weight"))
        self.w = self._small_weights(tensors)
        if leftover := sorted(set(tensors) - UNUSED):
            raise ValueError(f"unexpected checkpoint tensors: {leftover[:5]} ({len(leftover)} total)")
        self.emb_cache, self.llm_cache = DynamicCache(), DynamicCache()
        self.quirk_steps = 0

    def _small_weights(self, tensors: dict) -> dict[str, torch.Tensor]:
        """Vision, text table, projector and output head, keyed by their names below embedding_model."""
        names = ["vision_embeddings.patch_embedding.weight", "vision_embeddings.patch_embedding.bias"]
        names += ["vision_embeddings.position_embedding", "llm_text_embeddings.weight"]
        names += [f"pixel_shuffle_proj.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        w = {n: take(tensors, EMB + n).to(self.device, self.dtype) for n in names}
        w["output"] = take(tensors, LLM + "output.weight").to(self.device, self.dtype)
        return w

    @classmethod
    def from_dir(cls, path: str, dtype=torch.float32, device="cpu", attn: str = "eager") -> "ReferenceHoVLE":
        with open(f"{path}/config.json") as f:
            config = json.load(f)
        return cls(config, load_tensors(path), dtype, device, attn)

    def vision_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, P, C): conv patches plus (bicubic-resized) position rows 1.. (row 0 = unused CLS)."""
        w, b = self.w["vision_embeddings.patch_embedding.weight"], self.w["vision_embeddings.patch_embedding.bias"]
        pos = self.w["vision_embeddings.position_embedding"]  # (1, 1+g*g, C)
        x = F.conv2d(pixel_values.to(self.device, self.dtype), w, b, stride=self.patch)  # (n, C, h, w)
        _, c, h, wd = x.shape
        g = math.isqrt(pos.shape[1] - 1)
        grid = pos[0, 1:].float().reshape(1, g, g, c).permute(0, 3, 1, 2)  # (1, C, g, g)
        # Always resized like the original; bicubic at the same size is the identity.
        grid = F.interpolate(grid, size=(h, wd), mode="bicubic", align_corners=False).to(self.dtype)
        x = x.flatten(2).transpose(1, 2)  # (n, h*w, C), row-major patches
        return x + grid.flatten(2).transpose(1, 2)  # (1, h*w, C) broadcast over tiles

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """pixel_shuffle_proj: Linear -> GELU(erf) -> Linear on (..., 4C)."""
        x = F.gelu(F.linear(x, self.w["pixel_shuffle_proj.0.weight"], self.w["pixel_shuffle_proj.0.bias"]))
        return F.linear(x, self.w["pixel_shuffle_proj.2.weight"], self.w["pixel_shuffle_proj.2.bias"])

    def _image_mask(self, ids: torch.Tensor, generated: int) -> torch.Tensor:
        """IMG_CONTEXT positions of the prompt; the last `generated` ids are generated tokens, text even when a model
        chose the IMG_CONTEXT id (decoding embeds every new token as text)."""
        is_img = ids == self.img_context_id
        is_img[len(ids) - generated :] = False
        return is_img

    def _place(self, is_img: torch.Tensor, rows: torch.Tensor, base: torch.Tensor, what: str) -> torch.Tensor:
        if int(is_img.sum()) != rows.shape[0]:
            raise ValueError(f"{what}: {int(is_img.sum())} IMG_CONTEXT ids but {rows.shape[0]} image features")
        base = base.clone()
        base[is_img] = rows
        return base

    def _embedding_input(self, ids: torch.Tensor, pixel_values, generated: int) -> torch.Tensor:
        x = self.w["llm_text_embeddings.weight"][ids]  # (L, C)
        if pixel_values is None:
            feats = x[:0]
        else:
            feats = self.vision_tokens(pixel_values)  # (n, P, C)
            if self.loc == "pre":
                feats = self.project(pixel_shuffle(feats, self.ratio))  # (n, P*r^2, C)
            feats = feats.reshape(-1, x.shape[-1])  # (n*T, C), tile-major
        return self._place(self._image_mask(ids, generated), feats, x, "embedding sequence")[None]  # (1, L, C)

    def _post_llm_input(self, h: torch.Tensor, ids_emb, ids_llm, n_tiles: int, generated: int) -> torch.Tensor:
        is_img = self._image_mask(ids_emb, generated)
        img, text = h[0, is_img], h[0, ~is_img]  # (n*P, C), (L_text, C)
        if n_tiles:
            img = img.reshape(n_tiles, -1, img.shape[-1])  # (n, P, C)
            img = self.project(pixel_shuffle(img, self.ratio)).reshape(-1, img.shape[-1])  # (n*P*r^2, C)
        llm_img = self._image_mask(ids_llm, generated)
        x, is_text = h.new_zeros(len(ids_llm), h.shape[-1]), ~llm_img
        if text.shape[0] != int(is_text.sum()):
            raise ValueError(f"HD: {text.shape[0]} text ids in ids_emb but {int(is_text.sum())} in ids_llm")
        x[is_text] = text
        return self._place(llm_img, img, x, "LLM sequence")[None]  # (1, N, C)

    def _llm_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = x / x.norm(dim=-1, keepdim=True)  # no epsilon, as the original
        past, q = self.llm_cache.get_seq_length(), x.shape[1]
        mask = causal_mask(q, past, self.dtype, self.device)
        h = self.norm(self.llm(x, list(range(past, past + q)), self.llm_cache, mask))
        return F.linear(h[0], self.w["output"]).float()  # (q, V), fp32 like the original's logits.float()

    @torch.no_grad()
    def prefill(
        self, ids_emb: list[int], ids_llm: list[int], pixel_values: torch.Tensor | None = None, generated: int = 0
    ):
        """Logits (len(ids_llm), V) fp32 for every LLM position; fills both caches. The last `generated` ids of both
        sequences are generated tokens (a recomputation): always text."""
        if self.llm_cache.get_seq_length():
            raise RuntimeError("prefill was already called; build a fresh ReferenceHoVLE per sequence")
        if self.loc == "pre" and list(ids_emb) != list(ids_llm):
            raise ValueError("HoVLE ('pre') needs ids_emb == ids_llm")
        e_ids, l_ids = torch.tensor(ids_emb, device=self.device), torch.tensor(ids_llm, device=self.device)
        x = self._embedding_input(e_ids, pixel_values, generated)
        h = self.emb(x, list(range(x.shape[1])), self.emb_cache, causal_mask(x.shape[1], 0, self.dtype, self.device))
        if self.loc == "post":
            h = self._post_llm_input(h, e_ids, l_ids, 0 if pixel_values is None else pixel_values.shape[0], generated)
        return self._llm_logits(h)

    @torch.no_grad()
    def decode_step(self, token: int, hd_decode: str = "natural") -> torch.Tensor:
        """Logits (V,) fp32 for the position after `token`; docs/hovle.md §3.4 / §3.5."""
        if hd_decode not in HD_DECODE_MODES:
            raise ValueError(f"hd_decode must be one of {HD_DECODE_MODES}, got {hd_decode!r}")
        if hd_decode == "reference-quirk" and self.loc != "post":
            raise ValueError("hd_decode='reference-quirk' only exists for HoVLE-HD ('post')")
        if not self.llm_cache.get_seq_length():
            raise RuntimeError("decode_step needs a prefill first")
        e = self.w["llm_text_embeddings.weight"][token].view(1, 1, -1)  # (1, 1, C)
        past = self.emb_cache.get_seq_length()
        if hd_decode == "natural":
            h = self.emb(e, [past], self.emb_cache, None)
        else:
            # Position N_hd-1, keys = the N_hd prompt keys only (its own key masked out), nothing cached. The
            # official code's cache still grows, so its dynamic-NTK length is N_hd + step: mirrored via rope_len.
            self.quirk_steps += 1
            mask = torch.zeros(1, 1, 1, past + 1, dtype=self.dtype, device=self.device)
            mask[..., -1] = torch.finfo(self.dtype).min
            h = self.emb(e, [past - 1], _PromptOnly(self.emb_cache), mask, rope_len=past + self.quirk_steps)
        return self._llm_logits(h)[-1]

    @torch.no_grad()
    def greedy(self, ids_emb, ids_llm, pixel_values, max_new_tokens: int, hd_decode="natural", eos_id=None):
        """Incremental greedy decoding; step_logits[i] is the (V,) fp32 row token i was taken from."""
        tokens, step_logits = [], []
        if max_new_tokens <= 0:
            return tokens, step_logits
        logits = self.prefill(ids_emb, ids_llm, pixel_values)[-1]
        while True:
            tokens.append(int(logits.argmax()))
            step_logits.append(logits)
            if len(tokens) >= max_new_tokens or tokens[-1] == eos_id:
                return tokens, step_logits
            logits = self.decode_step(tokens[-1], hd_decode)
