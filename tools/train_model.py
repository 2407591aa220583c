"""A trainable HoVLE / HoVLE-HD built from the tests' independent reference (hovle/reference/model.py), batched.

No layer math is written here: the stacks are the reference's `Stack`s of transformers `LlamaDecoderLayer`s (the
fused wqkv split by `split_wqkv`), the image side is the reference's `vision_tokens`, `pixel_shuffle` and
`project`, and the final norm is its `LlamaRMSNorm`. What this file adds is the batch: several tree-packed
sequences (tools/scene_data.py) padded to one length, with an additive mask that is causal, keeps each question's
branch to the shared prefix and itself, and keeps padding to itself; RoPE gets each token's own position.

`released_tensors` turns the trained modules back into the checkpoint's names and layouts (`fuse_wqkv` is the
inverse of the reference's `split_wqkv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hovle.reference import model as reference
from hovle.reference.model import EMB, LAYER_RENAME, LLM, ReferenceHoVLE, pixel_shuffle

from .scene_data import NOUN_CHANNELS, REGION_CHANNELS, SUMMARY_CHANNELS, Packed


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """Inverse of reference.split_wqkv: per kv group g, its n_rep query heads, then key head g, then value head g
    (docs/hovle.md §4.2). q (H*D, hidden), k and v (Hkv*D, hidden) -> wqkv ((H + 2*Hkv)*D, hidden)."""
    hidden, n_rep, d = q.shape[1], n_heads // n_kv, q.shape[0] // n_heads
    q = q.reshape(n_kv, n_rep, d, hidden)  # (Hkv, n_rep, D, hidden): query head g*n_rep+j
    kv = torch.stack([k.reshape(n_kv, d, hidden), v.reshape(n_kv, d, hidden)], dim=1)  # (Hkv, 2, D, hidden)
    return torch.cat([q, kv], dim=1).reshape(-1, hidden)  # (Hkv*(n_rep+2)*D, hidden)


def _weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per channel, averaged over the weights (a channel of weight 0 is not asked)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")
    return loss / weights.sum().clamp(min=1)


class TrainableHoVLE(torch.nn.Module):
    """The reference model's modules and small weights as parameters, with a batched training forward."""

    def __init__(
        self,
        config: dict,
        tensors: dict[str, torch.Tensor],
        attn: str = "sdpa",
        region_weight: float = 1.0,
        summary_weight: float = 1.0,
        noun_weight: float = 1.0,
    ):
        super().__init__()
        self.ref = ReferenceHoVLE(config, {k: v.clone() for k, v in tensors.items()}, attn=attn)
        self.config, self.untrained = config, {k: tensors[k] for k in reference.UNUSED}
        self.region_weight, self.summary_weight, self.noun_weight = region_weight, summary_weight, noun_weight
        self.emb, self.llm, self.norm = self.ref.emb, self.ref.llm, self.ref.norm
        self.small = torch.nn.ParameterDict({k.replace(".", "|"): torch.nn.Parameter(v) for k, v in self.ref.w.items()})
        self.ref.w = {k.replace("|", "."): p for k, p in self.small.items()}  # the reference's methods use these
        hidden = self.ref.w["llm_text_embeddings.weight"].shape[1]
        per_token = round(self.ref.ratio**-2) if self.ref.loc == "pre" else 1  # patches per embedding token
        self.region_head = torch.nn.Linear(hidden, REGION_CHANNELS * per_token)  # training only: never exported
        self.summary_head = torch.nn.Linear(hidden, SUMMARY_CHANNELS)  # training only: never exported
        self.noun_head = torch.nn.Linear(hidden, NOUN_CHANNELS)  # training only: never exported
        self.summary_layer = len(self.llm.layers) // 2  # both read after this many LLM layers: later ones can use it
        for p in self.parameters():
            p.requires_grad_(True)

    # ---- batch ----------------------------------------------------------------------------------------------
    @staticmethod
    def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
        n = max(map(len, rows))
        return torch.tensor([r + [value] * (n - len(r)) for r in rows])  # (B, S)

    @staticmethod
    def _mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive (B, 1, S, S): key j visible to query i iff j <= i and j is prefix or in i's branch; padding
        (segment -1) sees itself only, so no row is empty."""
        s = seg.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool).tril()  # (S, S)
        qs, ks = seg[:, :, None], seg[:, None, :]  # (B, S, 1), (B, 1, S)
        ok = causal & (ks >= 0) & ((ks == 0) | (ks == qs))
        ok |= torch.eye(s, dtype=torch.bool)
        return torch.zeros(ok.shape, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)[:, None]

    def _run(self, stack, x: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor) -> list[torch.Tensor]:
        """The reference stack's own rotary embedding and LlamaDecoderLayers on a padded batch: the hidden states
        (B, S, C) after each layer, the input first."""
        cos_sin = stack.rotary(x, pos)  # (B, S, D) each
        mask = self._mask(seg, x.dtype)
        states = [x]
        for layer in stack.layers:
            states.append(layer(states[-1], attention_mask=mask, position_embeddings=cos_sin))
        return states

    def forward(self, batch: list[Packed]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (n, V) fp32 at every labelled position (batch order, then position), their labels (n,) and the
        id of the question branch each belongs to (n,)."""
        ctx = self.ref.img_context_id
        ids_emb, ids_llm = self._pad([b.ids_emb for b in batch], 0), self._pad([b.ids_llm for b in batch], 0)
        seg_emb, seg_llm = self._pad([b.seg_emb for b in batch], -1), self._pad([b.seg_llm for b in batch], -1)
        pos_emb, pos_llm = self._pad([b.pos_emb for b in batch], 0), self._pad([b.pos_llm for b in batch], 0)
        labels = self._pad([b.labels for b in batch], -100)
        pixels = torch.cat([b.pixel_values for b in batch])  # (tiles, 3, S, S) in batch order
        feats = self.ref.vision_tokens(pixels)  # (tiles, P, C)
        if self.ref.loc == "pre":
            feats = self.ref.project(pixel_shuffle(feats, self.ref.ratio))  # (tiles, P/4, C)
        img_emb = (ids_emb == ctx) & (seg_emb >= 0)
        x = self.ref.w["llm_text_embeddings.weight"][ids_emb]  # (B, S_emb, C)
        x = x.masked_scatter(img_emb[..., None], feats.reshape(-1, x.shape[-1]))
        h = self._run(self.emb, x, pos_emb, seg_emb)[-1]
        self.last_regions = self.region_head(h[img_emb])  # (image tokens, kinds): the auxiliary loss's logits
        if self.ref.loc == "post":
            h = self._post_llm_input(h, ids_emb, ids_llm, seg_emb, seg_llm, pixels.shape[0])
        if self.ref.normalize:
            h = h / h.norm(dim=-1, keepdim=True)
        states = self._run(self.llm, h, pos_llm, seg_llm)  # (B, S_llm, C) each
        at = states[self.summary_layer][torch.arange(len(batch)), [b.summary_at for b in batch]]  # (B, C)
        self.last_summary = self.summary_head(at)
        rows = torch.tensor([b for b, p in enumerate(batch) for _ in p.nouns], dtype=torch.long)
        cols = torch.tensor([i for p in batch for i, _ in p.nouns], dtype=torch.long)
        self.last_nouns = self.noun_head(states[self.summary_layer][rows, cols])  # (nouns, NOUN_CHANNELS)
        out = self.norm(states[-1])
        keep = labels != -100
        branch = (torch.arange(len(batch))[:, None] * (1 + seg_llm.max()) + seg_llm)[keep]  # (n,) one id per branch
        return F.linear(out[keep], self.ref.w["output"]).float(), labels[keep], branch

    def _post_llm_input(self, h, ids_emb, ids_llm, seg_emb, seg_llm, n_tiles: int) -> torch.Tensor:
        """HoVLE-HD: image rows shuffled + projected into the LLM's IMG_CONTEXT rows, text rows carried over."""
        ctx, c = self.ref.img_context_id, h.shape[-1]
        img_emb, img_llm = (ids_emb == ctx) & (seg_emb >= 0), (ids_llm == ctx) & (seg_llm >= 0)
        img = h[img_emb].reshape(n_tiles, -1, c)  # (tiles, P, C)
        img = self.ref.project(pixel_shuffle(img, self.ref.ratio)).reshape(-1, c)  # (tiles*P/4, C)
        text = h[(ids_emb != ctx) & (seg_emb >= 0)]  # (n_text, C), same tokens in both sequences
        x = h.new_zeros(*ids_llm.shape, c)  # (B, S_llm, C)
        x = x.masked_scatter(img_llm[..., None], img)
        return x.masked_scatter(((ids_llm != ctx) & (seg_llm >= 0))[..., None], text)

    def loss(self, batch: list[Packed]) -> torch.Tensor:
        """Mean over questions of each answer's mean token loss: a one-word answer weighs as much as a caption."""
        logits, labels, branch = self(batch)
        _, which, sizes = torch.unique(branch, return_inverse=True, return_counts=True)
        per_token = F.cross_entropy(logits, labels, reduction="none")
        total = (per_token / sizes[which]).sum() / len(sizes)
        if self.region_weight and all(b.regions is not None for b in batch):
            targets = torch.cat([b.regions for b in batch])
            total = total + self.region_weight * F.binary_cross_entropy_with_logits(self.last_regions, targets)
        if self.summary_weight and all(b.summary is not None for b in batch):
            targets, weights = torch.stack([b.summary for b in batch]).unbind(1)  # (B, SUMMARY_CHANNELS) each
            total = total + self.summary_weight * _weighted_bce(self.last_summary, targets, weights)
        if self.noun_weight and all(b.noun_facts is not None for b in batch) and len(self.last_nouns):
            targets, weights = torch.cat([b.noun_facts for b in batch]).unbind(1)  # (nouns, NOUN_CHANNELS) each
            total = total + self.noun_weight * _weighted_bce(self.last_nouns, targets, weights)
        return total

    # ---- export ---------------------------------------------------------------------------------------------
    def _stack_tensors(self, stack, prefix: str) -> dict[str, torch.Tensor]:
        c, out = stack.cfg, {}
        for i, layer in enumerate(stack.layers):
            state = layer.state_dict()
            q, k, v = (state[f"self_attn.{n}_proj.weight"] for n in "qkv")
            out[f"{prefix}{i}.attention.wqkv.weight"] = fuse_wqkv(q, k, v, c.num_attention_heads, c.num_key_value_heads)
            out.update({f"{prefix}{i}.{old}": state[new] for old, new in LAYER_RENAME.items()})
        return out

    @torch.no_grad()
    def released_tensors(self) -> dict[str, torch.Tensor]:
        """Every checkpoint tensor under its released name (the two unused ones as they were given)."""
        out = {EMB + k: v for k, v in self.ref.w.items() if k != "output"}
        out[LLM + "output.weight"] = self.ref.w["output"]
        out.update(self._stack_tensors(self.emb, EMB + "encoder."))
        out.update(self._stack_tensors(self.llm, LLM + "model.layers."))
        out[LLM + "model.norm.weight"] = self.norm.weight
        out.update(self.untrained)
        return {k: v.detach().clone().float() for k, v in out.items()}
