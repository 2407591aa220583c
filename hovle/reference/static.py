"""The reference with transformers' StaticCache for both stacks and a fixed-shape decode step.

That is what "a static cache + torch.compile" means for the Hugging Face baseline of the end-to-end benchmark:
every decode step has the same shapes (keys always span the whole preallocated cache, a mask hides the unused
tail; positions are tensors), so `torch.compile(mode="reduce-overhead")` can capture it. Like the reference it
never imports engine code. HoVLE and HoVLE-HD with natural decoding.
"""

import torch
import torch.nn.functional as F
from transformers.cache_utils import StaticCache

from .model import CACHE_KW, ReferenceHoVLE


class StaticReferenceHoVLE(ReferenceHoVLE):
    def start(self, max_emb: int, max_llm: int, compile_mode: str | None = None) -> None:
        """Fresh static caches of the given widths; `compile_mode` compiles the decode step (e.g. reduce-overhead)."""
        self.max_emb, self.max_llm = max_emb, max_llm
        self.emb_cache = StaticCache(config=self.emb.cfg, max_cache_len=max_emb)
        self.llm_cache = StaticCache(config=self.llm.cfg, max_cache_len=max_llm)
        self.pos = torch.zeros(2, dtype=torch.int64, device=self.device)  # next position: embedding stack, LLM
        self.step_fn = self._step if compile_mode is None else torch.compile(self._step, mode=compile_mode)

    def _mask(self, q: int, past: int, width: int) -> torch.Tensor:
        """(1, 1, q, width) additive mask: key j is visible to query i iff j <= past + i."""
        keys = torch.arange(width, device=self.device)
        blocked = keys[None, :] > (past + torch.arange(q, device=self.device))[:, None]
        mask = torch.zeros(blocked.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill(blocked, torch.finfo(self.dtype).min)[None, None]

    @torch.no_grad()
    def prefill(self, ids_emb: list[int], ids_llm: list[int], pixel_values: torch.Tensor | None = None):
        e_ids, l_ids = torch.tensor(ids_emb, device=self.device), torch.tensor(ids_llm, device=self.device)
        x = self._embedding_input(e_ids, pixel_values, 0)
        n_emb, n_llm = len(ids_emb), len(ids_llm)
        h = self.emb(x, list(range(n_emb)), self.emb_cache, self._mask(n_emb, 0, self.max_emb))
        if self.loc == "post":
            h = self._post_llm_input(h, e_ids, l_ids, 0 if pixel_values is None else pixel_values.shape[0], 0)
        if self.normalize:
            h = h / h.norm(dim=-1, keepdim=True)
        out = self.norm(self.llm(h, list(range(n_llm)), self.llm_cache, self._mask(n_llm, 0, self.max_llm)))
        self.pos.copy_(torch.tensor([n_emb, n_llm]))
        return F.linear(out[0], self.w["output"]).float()

    def _run(self, stack, x: torch.Tensor, pos: torch.Tensor, cache, width: int) -> torch.Tensor:
        cos, sin = stack.rotary(x, pos.view(1, 1))  # (1, 1, D)
        visible = torch.arange(width, device=x.device) <= pos
        mask = torch.where(visible, 0.0, torch.finfo(self.dtype).min).to(self.dtype).view(1, 1, 1, width)
        for layer in stack.layers:
            x = layer(x, attention_mask=mask, position_embeddings=(cos, sin), use_cache=True, **{CACHE_KW: cache})
        return x

    def _step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """token: (1,) int64; pos: (2,) next positions. Fixed shapes: the same graph every step."""
        e = self.w["llm_text_embeddings.weight"][token].view(1, 1, -1)  # (1, 1, C)
        h = self._run(self.emb, e, pos[0], self.emb_cache, self.max_emb)
        if self.normalize:
            h = h / h.norm(dim=-1, keepdim=True)
        out = self.norm(self._run(self.llm, h, pos[1], self.llm_cache, self.max_llm))
        return F.linear(out[0, -1], self.w["output"]).float()  # (V,)

    @torch.no_grad()
    def decode_step(self, token: int, hd_decode: str = "natural") -> torch.Tensor:
        if hd_decode != "natural":
            raise ValueError("the static-cache reference implements natural decoding only")
        logits = self.step_fn(torch.tensor([token], device=self.device), self.pos.clone())
        self.pos += 1
        return logits
