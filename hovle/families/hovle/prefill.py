"""One prompt's prefill in chunks: which rows go into the embedding module and when LLM tokens are ready.

HoVLE ("pre"): the embedding module and the LLM read the same sequence, so a chunk [a, b) goes through the 8
embedding layers and its output straight into the 24 LLM layers for the same positions.

HoVLE-HD ("post"): the embedding module reads the longer sequence (1024 IMG_CONTEXT rows per tile); the LLM reads
the text rows of its output and, per tile, the pixel shuffle + projection of the tile's 1024 output rows (256 LLM
tokens). LLM token j is ready once the embedding module has produced row need[j] - 1 (its text row, or the last
row of its tile); `need` is non-decreasing, so a chunk of embedding rows makes a prefix of the remaining LLM
tokens ready. The embedding outputs wait in a buffer until their tile is complete.

Rotary tables of every chunk are computed for the whole prompt's length (`rope_len`), so with dynamic-NTK RoPE a
chunked prefill rotates exactly as one forward over the prompt would.

Image rows are where the request's spans say, not wherever the IMG_CONTEXT id occurs: a sequence recomputed after
preemption carries its generated tokens, and a generated IMG_CONTEXT id is text, as it was when decoded.
"""

from __future__ import annotations

import numpy as np
import torch


def _span_mask(n: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """(n,) bool: True inside the [start, end) image spans."""
    mask = np.zeros(n, dtype=bool)
    for start, end in spans:
        mask[start:end] = True
    return mask


class PromptPlan:
    """The prefill of one prompt (both stacks' ids, where its images sit) and its buffers between chunks. How far
    the prefill got is the sequence's (the runtime's `kv_len`): every method is told where it stands."""

    def __init__(
        self,
        model,
        ids_emb: list[int],
        ids_llm: list[int],
        spans_emb,
        spans_llm,
        pixel_values: torch.Tensor | None,
        all_logits: bool = False,
    ):
        self.model, self.hd = model, model.cfg.is_hd
        self.ids_emb, self.ids_llm = ids_emb, ids_llm
        self.all_logits = all_logits
        self.pixel_values = pixel_values
        self._image_rows: torch.Tensor | None = None
        self._emb_img = _span_mask(len(ids_emb), spans_emb)  # image rows of the embedding sequence
        self._ctx_before = np.concatenate(([0], np.cumsum(self._emb_img)))  # image rows before each embedding row
        if self.hd:
            self._hd_maps(spans_emb, spans_llm)

    def resume(self, cached: tuple[int, int], page_size: int) -> tuple[int, int]:
        """Where the prefill restarts in each stack when the first cached[k] positions of stack k are in shared
        pages. HoVLE: both stacks at the same position c (whole shared pages in both). HoVLE-HD: the LLM at c, the
        embedding module at the last page boundary before the first row that LLM token c needs (its tile's first
        row for an image token: its 256 LLM tokens come from the tile's 1024 outputs); the rows between are
        recomputed, their outputs used only as far as needed. At least the prompt's last token is always
        prefilled (its logits give the first token)."""
        c = min(cached[1], (len(self.ids_llm) - 1) // page_size * page_size)
        if not self.hd:
            c = min(c, cached[0])
            return c, c
        return min(cached[0], self.first_needed(c) // page_size * page_size), c

    def first_needed(self, c: int) -> int:
        """First embedding row whose output the LLM tokens from position c on need (its text row, or the first
        row of its tile for an image token)."""
        if not self.hd:
            return c
        if self._is_img[c]:
            return int(self._need[c]) - self.model.cfg.patches_per_tile
        return int(self._src[c])

    def drop_buffers(self) -> None:
        """Drops the device buffers once the prompt is in the caches."""
        self._image_rows = self._h = self._feats = self.pixel_values = None

    # ---- embedding module -------------------------------------------------------------------------------
    def emb_inputs(self, a: int, b: int) -> torch.Tensor:
        """(b - a, C) input rows of embedding positions [a, b): text embeddings, image rows at IMG_CONTEXT."""
        m = self.model
        x = m.embed(torch.tensor(self.ids_emb[a:b], dtype=torch.int64).to(m.device, non_blocking=True))
        r0, r1 = int(self._ctx_before[a]), int(self._ctx_before[b])
        if r1 > r0:
            if self._image_rows is None:
                self._image_rows = m.image_rows(self.pixel_values)
            mask = torch.from_numpy(self._emb_img[a:b]).to(m.device)
            x[mask] = self._image_rows[r0:r1]
        return x

    def take_emb_outputs(self, a: int, b: int, h: torch.Tensor, l0: int) -> tuple[int, torch.Tensor | None]:
        """Embedding outputs of rows [a, b), with LLM positions [0, l0) already cached -> (l1, the inputs of the
        LLM positions [l0, l1) now ready, or None)."""
        if not self.hd:
            return b, h
        if self._h is None:
            self._hd_buffers()
        self._h[a:b] = h
        self._project_complete_tiles(b)
        l1 = int(np.searchsorted(self._need, b, side="right"))
        return l1, (self._llm_inputs(l0, l1) if l1 > l0 else None)

    # ---- HoVLE-HD -----------------------------------------------------------------------------------------
    def _hd_maps(self, spans_emb, spans_llm) -> None:
        cfg = self.model.cfg
        per_tile_emb, per_tile_llm = cfg.patches_per_tile, cfg.tokens_per_tile
        n_llm = len(self.ids_llm)
        need = np.zeros(n_llm, dtype=np.int64)
        src = np.zeros(n_llm, dtype=np.int64)  # text: embedding row; image: row of the projected features
        is_img = _span_mask(n_llm, spans_llm)
        text_rows = np.flatnonzero(~self._emb_img)
        need[~is_img], src[~is_img] = text_rows + 1, text_rows
        self._tiles: list[tuple[int, int]] = []  # (first embedding row, first feature row) of each tile
        feat = 0
        for (ls, le), (es, _) in zip(spans_llm, spans_emb):
            for t in range((le - ls) // per_tile_llm):
                self._tiles.append((es + t * per_tile_emb, feat + t * per_tile_llm))
                tokens = slice(ls + t * per_tile_llm, ls + (t + 1) * per_tile_llm)
                need[tokens] = es + (t + 1) * per_tile_emb
                src[tokens] = np.arange(feat + t * per_tile_llm, feat + (t + 1) * per_tile_llm)
            feat += le - ls
        self._need, self._src, self._is_img = need, src, is_img
        self._n_feats, self._h, self._feats = feat, None, None
        self._projected = 0  # tiles projected so far (they complete in order)

    def _hd_buffers(self) -> None:
        """The embedding outputs and projected tile features kept until the LLM needs them (on first use: the
        plan is made at admission, on the scheduler's side)."""
        m = self.model
        c = m.text_table.shape[1]
        self._h = torch.empty(len(self.ids_emb), c, dtype=m.dtype, device=m.device)
        self._feats = torch.empty(self._n_feats, c, dtype=m.dtype, device=m.device)

    def _project_complete_tiles(self, emb_done: int) -> None:
        per_tile = self.model.cfg.patches_per_tile
        done = [i for i in range(self._projected, len(self._tiles)) if self._tiles[i][0] + per_tile <= emb_done]
        if not done:
            return
        rows = torch.cat([torch.arange(self._tiles[i][0], self._tiles[i][0] + per_tile) for i in done])
        patches = self._h[rows.to(self._h.device)].view(len(done), per_tile, -1)  # (n, P, C)
        feats = self.model.shuffle_project(patches)  # (n * P/4, C)
        per_llm = self.model.cfg.tokens_per_tile
        for k, i in enumerate(done):
            start = self._tiles[i][1]
            self._feats[start : start + per_llm] = feats[k * per_llm : (k + 1) * per_llm]
        self._projected = done[-1] + 1

    def _llm_inputs(self, l0: int, l1: int) -> torch.Tensor:
        dev = self._h.device
        x = torch.empty(l1 - l0, self._h.shape[1], dtype=self._h.dtype, device=dev)
        img, src = self._is_img[l0:l1], self._src[l0:l1]
        for rows, table in ((np.flatnonzero(img), self._feats), (np.flatnonzero(~img), self._h)):
            if len(rows):
                x[torch.from_numpy(rows).to(dev)] = table[torch.from_numpy(src[rows]).to(dev)]
        return x
