"""Independent InternLM-XComposer2-4KHD reference (docs/other-seeds.md §1), for the engine's correctness tests and
the GPU benchmark's baseline: transformers' CLIPVisionModel and LlamaDecoderLayers with Partial LoRA written here,
plain torch and PIL for the rest, never the engine. It follows the authors' code path: HD transform, vision tower
over [global, crops], merge, separators, projector, `interleav_wrap_chat`'s text pieces each tokenised with BOS
(bos="first": only the first), im_mask over every image row, causal InternLM2 with PLoRA on masked rows.
"""

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.cache_utils import DynamicCache

from .model import Stack, causal_mask
from .weights import llama_config, split_wqkv, take

VIT = "vit.vision_tower.vision_model."
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SCALES = {"wqkv": 2.0, "wo": 1.0, "w1": 1.0, "w2": 1.0, "w3": 1.0}  # lora_alpha / lora_r of the release
META = (
    "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).\n"
    "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is developed by Shanghai "
    "AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language chosen by the user such "
    "as English and 中文.\n"
    "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses effectively based on the "
    "provided image."
)


def chat_prompt(query: str, history: list[tuple[str, str]] = (), meta: str = META) -> str:
    """The authors' prompt string: system turn, history turns, the query, the open assistant turn."""
    text = f"[UNUSED_TOKEN_146]system\n{meta}[UNUSED_TOKEN_145]\n" if meta else ""
    for q, a in history:
        text += f"[UNUSED_TOKEN_146]user\n{q}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n{a}[UNUSED_TOKEN_145]\n"
    return text + f"[UNUSED_TOKEN_146]user\n{query}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"


def hd_transform(img: Image.Image, hd_num: int) -> torch.Tensor:
    """The authors' HD_transform + ToTensor + Normalize: (3, H, W) with H, W multiples of 336."""
    width, height = img.size
    trans = width < height
    if trans:
        img = img.transpose(Image.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    target = int(np.ceil(new_h / 336) * 336)
    top = int((target - new_h) / 2)
    img = ImageOps.expand(img, border=(0, top, 0, target - new_h - top), fill=(255, 255, 255))
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


class _PLoRA(torch.nn.Module):
    """y = base(x), plus scale * B(A(x)) on the rows the shared `mask` holder marks."""

    def __init__(self, base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, holder: dict):
        super().__init__()
        self.base, self.a, self.b, self.scale, self.holder = base, a, b, scale, holder

    def forward(self, x):
        y = x @ self.base.t()
        mask = self.holder["mask"]  # (1, q) bool
        if mask is not None and bool(mask.any()):
            part = x[mask]
            y[mask] = y[mask] + (part @ self.a.t() @ self.b.t()) * self.scale
        return y


class ReferenceXComposer:
    def __init__(self, config: dict, tensors: dict, sp, dtype=torch.float32, device="cpu", attn: str = "eager"):
        """tensors: every tensor of the checkpoint by name (consumed); sp: the SentencePiece processor of the
        folder's tokenizer.model (ids per text piece, the unused tokens being pieces of it)."""
        self.dtype, self.device, self.sp = dtype, torch.device(device), sp
        self.holder = {"mask": None}
        self.llm = Stack(llama_config(config, 1e-5, 32768, attn), tensors, "model.layers.", dtype, self.device)
        self._add_plora(tensors)
        self.tok = take(tensors, "model.tok_embeddings.weight").to(self.device, dtype)
        self.norm_w = take(tensors, "model.norm.weight").to(self.device, dtype)
        self.eps = float(config.get("rms_norm_eps", 1e-5))
        self.head = take(tensors, "output.weight").to(self.device, dtype)
        self.vit = self._vision(tensors)
        self.proj = [
            take(tensors, f"vision_proj.{i}.{p}").to(self.device, dtype) for i in (0, 2) for p in ("weight", "bias")
        ]
        self.glb_gn = take(tensors, "plora_glb_GN").to(self.device, dtype)
        self.sub_gn = take(tensors, "plora_sub_GN").to(self.device, dtype)
        for extra in [n for n in tensors if "post_layernorm" in n or n.endswith(("inv_freq", "position_ids"))]:
            tensors.pop(extra)
        if tensors:
            raise ValueError(f"unexpected checkpoint tensors: {sorted(tensors)[:5]}")
        self.cache = DynamicCache()

    def _add_plora(self, tensors: dict) -> None:
        c = self.llm.cfg
        targets = {
            "wqkv": None,
            "wo": "self_attn.o_proj",
            "w1": "mlp.gate_proj",
            "w3": "mlp.up_proj",
            "w2": "mlp.down_proj",
        }
        for i, layer in enumerate(self.llm.layers):
            p = f"model.layers.{i}."
            for short, path in targets.items():
                name = p + ("attention." if short in ("wqkv", "wo") else "feed_forward.") + short
                a, b = (take(tensors, f"{name}.Plora_{x}.weight").to(self.device, self.dtype) for x in "AB")
                if short == "wqkv":
                    parts = split_wqkv(b, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
                    for proj, bp in zip(("q_proj", "k_proj", "v_proj"), parts):
                        base = getattr(layer.self_attn, proj).weight
                        setattr(layer.self_attn, proj, _PLoRA(base, a, bp, SCALES[short], self.holder))
                else:
                    owner, attr = path.split(".")
                    module = getattr(layer, owner)
                    setattr(module, attr, _PLoRA(getattr(module, attr).weight, a, b, SCALES[short], self.holder))

    def _vision(self, tensors: dict) -> CLIPVisionModel:
        width = tensors[VIT + "embeddings.class_embedding"].shape[0]
        layers = 1 + max(int(n[len(VIT) :].split(".")[2]) for n in tensors if n.startswith(VIT + "encoder.layers."))
        cfg = CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=tensors[VIT + "encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=layers,
            num_attention_heads=width // 64,
            image_size=336,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
        model = CLIPVisionModel(cfg).eval().to(self.device, self.dtype)
        names = [n for n in tensors if n.startswith(VIT) and "post_layernorm" not in n]
        state = {n[len(VIT) :]: take(tensors, n) for n in names}
        own = model.state_dict()
        prefix = "vision_model." if any(k.startswith("vision_model.") for k in own) else ""
        model.load_state_dict({prefix + k: v.to(self.device, self.dtype) for k, v in state.items()}, strict=False)
        missing = [k for k in own if not k.endswith(("position_ids", "post_layernorm.weight", "post_layernorm.bias"))]
        missing = [k for k in missing if k.removeprefix(prefix) not in state]
        if missing:
            raise ValueError(f"vision tensors missing: {missing[:5]}")
        return model

    # ---- image -> embeddings (the authors' vit forward, then vision_proj) -----------------------------------------
    def image_embeds(self, img: torch.Tensor) -> torch.Tensor:
        """(3, H, W) normalised HD image -> (n_tokens, C) LLM input rows."""
        _, hh, ww = img.shape
        h, w = hh // 336, ww // 336
        sub = img.reshape(1, 3, h, 336, w, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
        glb = F.interpolate(img[None].float(), size=(336, 336), mode="bicubic")
        x = torch.cat([glb, sub]).to(self.device, self.dtype)
        feats = self.vit(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]  # (1 + h w, 576, C)
        n, c = feats.shape[1], feats.shape[2]
        g = int(math.sqrt(n))
        merged = feats.reshape(-1, g // 2, 2, g // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, g // 2, g // 2, 4 * c)
        glb_t = torch.cat([merged[:1], self.sub_gn.repeat(1, g // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
        s = (
            merged[1:]
            .reshape(1, h, w, g // 2, g // 2, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(1, h * g // 2, w * g // 2, 4 * c)
        )
        sub_t = torch.cat([s, self.sub_gn.repeat(1, h * g // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
        tokens = torch.cat([glb_t, self.glb_gn, sub_t], dim=1)[0]
        assert tokens.shape[0] == (h * w + 1) * (g // 2) ** 2 + 1 + (h + 1) * (g // 2)
        w0, b0, w2, b2 = self.proj
        return F.linear(F.gelu(F.linear(tokens, w0, b0)), w2, b2)

    def encode(self, text: str, bos: bool) -> list[int]:
        """The slow HF tokenizer's way: the text split on its special tokens (ids as they are), each other chunk
        encoded by SentencePiece on its own; BOS in front."""
        specials = ["<s>", "</s>", "<unk>"] + [f"[UNUSED_TOKEN_{n}]" for n in range(141, 147)]
        ids = [1] if bos else []
        for i, chunk in enumerate(re.split("(" + "|".join(map(re.escape, specials)) + ")", text)):
            if i % 2:
                ids.append(self.sp.piece_to_id(chunk))
            elif chunk:
                ids += self.sp.encode(chunk)
        return ids

    def wrap(self, prompt: str, images: list[torch.Tensor], bos: str = "per-segment"):
        """interleav_wrap_chat: (1, L, C) embeddings and (1, L) im_mask of the prompt with its images."""
        parts = prompt.split("<ImageHere>")
        embeds, mask = [], []
        for i, part in enumerate(parts):
            if part:
                ids = self.encode(part, bos == "per-segment" or (i == 0))
                embeds.append(self.tok[torch.tensor(ids, device=self.device)])
                mask.append(torch.zeros(len(ids), dtype=torch.bool))
            if i < len(images):
                rows = self.image_embeds(images[i])
                embeds.append(rows)
                mask.append(torch.ones(rows.shape[0], dtype=torch.bool))
        return torch.cat(embeds)[None], torch.cat(mask)[None].to(self.device)

    # ---- the LLM ----------------------------------------------------------------------------------------------
    def _logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        past = self.cache.get_seq_length()
        self.holder["mask"] = mask
        h = self.llm(
            x, list(range(past, past + x.shape[1])), self.cache, causal_mask(x.shape[1], past, x.dtype, x.device)
        )
        hf = h.float()
        normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * self.norm_w
        return F.linear(normed, self.head).float()[0]

    @torch.no_grad()
    def prefill(self, prompt: str, images: list[torch.Tensor], bos: str = "per-segment") -> torch.Tensor:
        """(L, V) fp32 logits at every position of the prompt."""
        x, mask = self.wrap(prompt, images, bos)
        return self._logits(x, mask)

    @torch.no_grad()
    def decode_step(self, token: int) -> torch.Tensor:
        x = self.tok[torch.tensor([[token]], device=self.device)]
        return self._logits(x, torch.zeros(1, 1, dtype=torch.bool, device=self.device))[-1]

    @torch.no_grad()
    def greedy(self, prompt: str, images: list[torch.Tensor], steps: int, bos: str = "per-segment") -> list[int]:
        logits = self.prefill(prompt, images, bos)[-1]
        out = []
        for _ in range(steps):
            out.append(int(logits.argmax()))
            logits = self.decode_step(out[-1])
        return out


def _has(path: str, name: str) -> bool:
    import os

    return os.path.isfile(os.path.join(path, name))


def load_folder(path: str, dtype=torch.float32, device="cpu", attn: str = "eager") -> ReferenceXComposer:
    """The reference of a checkpoint folder: config.json, the pickle shards (or safetensors), tokenizer.model."""
    import json
    import os

    import sentencepiece as spm
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    tensors = {}
    index = next((f for f in ("pytorch_model.bin.index.json", "model.safetensors.index.json") if _has(path, f)), None)
    if index is not None:
        with open(os.path.join(path, index)) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"] if _has(path, "model.safetensors") else ["pytorch_model.bin"]
    for name in files:
        full = os.path.join(path, name)
        pickled = name.endswith(".bin")
        tensors.update(torch.load(full, map_location="cpu", weights_only=True) if pickled else load_file(full))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model"))
    return ReferenceXComposer(config, tensors, sp, dtype, device, attn)
