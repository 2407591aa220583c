"""Training data for the embedded default model: scenes -> question/answer pairs -> packed token sequences.

Every sequence is built by the engine itself (`Engine.prepare`, the same call `Engine.generate` makes), so the
model is trained on exactly the ids, positions and tiles it sees at inference. The answer is the assistant turn as
the engine's tokenizer splits a whole conversation: the text after "<|im_start|>" is one chunk, "assistant\\n" +
answer, followed by <|im_end|>.

Several questions about one image share its prompt prefix (system message, image tokens), so they are packed into
one sequence as a tree: the prefix once, then one branch per question; a branch attends to the prefix and to
itself only, and its positions continue from the prefix, so each branch computes exactly what a single prompt
would (the tests check this against the engine).
"""

from __future__ import annotations

import bisect
import contextlib
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from hovle.default_model.questions import plural, questions
from hovle.default_model.scenes import COLOURED, KINDS, PALETTE, Obj, Scene, random_scene, render, tile_grid
from hovle.prompt import get_template

ATTRIBUTE_KINDS = ("colour", "count", "presence", "relation", "biggest")
REGION_CHANNELS = 2 * len(KINDS) + 2  # see token_regions
SUMMARY_CHANNELS = 4 * len(KINDS) + len(KINDS) + len(COLOURED) * len(PALETTE)  # see scene_summary
NOUN_CHANNELS = 4 + len(PALETTE)  # see noun_facts
HELD_OUT_SEED = 900_000_000  # held-out scenes use seeds from here on; training scenes count up from 0
# Questions per kind and image in training (the caption, long, on every other image: see scene_example).
PER_KIND = {"colour": 1, "count": 2, "presence": 2, "relation": 3, "biggest": 1, "caption": 1}


def corpus_lines(n_scenes: int = 3000, tile_size: int = 56) -> list[str]:
    """Tokenizer corpus: the chat template's words and system message, every question, answer and caption of
    `n_scenes` training scenes (one system message per scene, as in the conversations)."""
    lines = []
    for seed in range(n_scenes):
        lines += ["system", "user", "assistant", get_template("internlm2-chat").system_message]
        for q, a, _ in questions(random_scene(seed, tile_size)):
            # Quoted too: in a prompt the question follows "\n" and the answer "assistant\n", so their first words
            # carry no leading-space mark; quotes give the tokenizer those words without it as well.
            lines += [q, a, f'"{q}"', f'"{a}"']
    return lines


def pick_questions(qa: list[tuple[str, str, str]], rng: random.Random, per_kind: dict[str, int]) -> list:
    """Up to per_kind[kind] pairs of each kind, round-robin over that kind's answers in random order: yes and no
    come equally often, and so do counts 0-3, so no fixed answer scores above chance."""
    out = []
    for kind, n in per_kind.items():
        groups: dict[str, list] = {}
        for x in qa:
            if x[2] == kind:
                groups.setdefault(x[1], []).append(x)
        order = sorted(groups)
        rng.shuffle(order)
        for answer in order:
            rng.shuffle(groups[answer])
        rounds = [
            groups[a][i] for i in range(max(map(len, groups.values()), default=0)) for a in order if i < len(groups[a])
        ]
        out += rounds[:n]
    return out


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Ids of the answer as they follow "<|im_start|>assistant\\n" in a whole conversation, then <|im_end|>."""
    head = tokenizer.encode("assistant\n", add_bos=False)
    ids = tokenizer.encode("assistant\n" + answer, add_bos=False)
    if ids[: len(head)] != head:
        raise ValueError(f"tokenizer merges 'assistant\\n' with the answer {answer!r}")
    return ids[len(head) :] + [tokenizer.im_end_id]


@dataclass
class Packed:
    """One image and its questions as a tree-packed sequence (both stacks' ids; equal for HoVLE)."""

    ids_emb: list[int]
    ids_llm: list[int]
    pos_emb: list[int]
    pos_llm: list[int]
    seg_emb: list[int]  # 0 = shared prefix, i = branch i
    seg_llm: list[int]
    labels: list[int]  # on the LLM sequence: the next token where it is an answer token or <|im_end|>, else -100
    pixel_values: torch.Tensor
    tiles: int
    regions: torch.Tensor | None = None  # (image tokens of the embedding sequence, channels): see token_regions
    summary_at: int = -1  # index of the prefix's last token (</img>) in the LLM sequence
    summary: torch.Tensor | None = None  # (2, SUMMARY_CHANNELS): targets, then their weights (see scene_summary)
    nouns: list[tuple[int, str]] = ()  # (index in the LLM sequence, kind) of each kind named in a question
    noun_facts: torch.Tensor | None = None  # (nouns, 2, NOUN_CHANNELS): targets, weights (see noun_facts)


def _prefix_len(ids: list[int], img_end: int) -> int:
    return len(ids) - ids[::-1].index(img_end)  # up to and including the last </img>


def _tree(prefix: list[int], branches: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    ids, pos, seg = list(prefix), list(range(len(prefix))), [0] * len(prefix)
    for i, b in enumerate(branches, 1):
        ids += b
        pos += range(len(prefix), len(prefix) + len(b))
        seg += [i] * len(b)
    return ids, pos, seg


_NOUN = {w: k for k in KINDS for w in (k, plural(k))}


def noun_positions(tokenizer, ids: list[int], start: int) -> list[tuple[int, str]]:
    """(index, kind) of the last token of every kind's name (singular or plural) in ids[start:]; pieces are joined
    into the text they spell, so a name split into pieces or glued to a "?" is found all the same."""
    text, ends = "", []
    for piece in map(tokenizer.id_to_token, ids[start:]):
        text += "\0" if piece.startswith("<") and piece.endswith(">") else piece.replace("\u2581", " ")
        ends.append(len(text))
    names = (m for m in re.finditer(r"[a-z]+", text) if m.group() in _NOUN)
    return [(start + bisect.bisect_left(ends, m.end()), _NOUN[m.group()]) for m in names]


@contextlib.contextmanager
def _preprocess_once(builder):
    """While packing, every prompt shows the same image: the engine's RequestBuilder preprocesses each image once
    (its tiles do not depend on the question) instead of once per question."""
    done: dict = {}

    def once(img, max_num: int, k: int):
        key = (id(img), max_num, k)  # the image stays alive for the whole block, so its id is not reused
        if key not in done:
            done[key] = type(builder)._image(builder, img, max_num, k)
        return done[key]

    builder._image = once
    try:
        yield
    finally:
        del builder._image  # the class's method again


def pack(engine, image, qa: list[tuple[str, str, str]], max_num: int | None = None) -> Packed:
    """Tree-packs the questions about one image; every prompt comes from engine.prepare."""
    tok = engine.tokenizer
    with _preprocess_once(engine.builder):
        reqs = [engine.prepare([{"role": "user", "content": q}], [image], max_num) for q, _, _ in qa]
    p_llm, p_emb = _prefix_len(reqs[0].ids_llm, tok.img_end_id), _prefix_len(reqs[0].ids_emb, tok.img_end_id)
    branches, labels_tail, nouns = [], [], []
    for r, (_, a, _) in zip(reqs, qa):
        if r.ids_llm[:p_llm] != reqs[0].ids_llm[:p_llm] or r.ids_emb[:p_emb] != reqs[0].ids_emb[:p_emb]:
            raise ValueError("prompts about one image differ before the question")
        if r.ids_llm[p_llm:] != r.ids_emb[p_emb:]:
            raise ValueError("the question's ids differ between the two stacks")
        ans = answer_ids(tok, a)
        shift = sum(map(len, branches))  # the earlier branches sit between the prefix and this one
        nouns += [(i + shift, k) for i, k in noun_positions(tok, r.ids_llm, p_llm)]
        branches.append(r.ids_llm[p_llm:] + ans[:-1])  # the closing <|im_end|> is a label only: nothing follows it
        n_prompt = len(r.ids_llm) - p_llm
        labels_tail += [-100] * (n_prompt - 1) + ans  # position t predicts token t+1
    ids_llm, pos_llm, seg_llm = _tree(reqs[0].ids_llm[:p_llm], branches)
    ids_emb, pos_emb, seg_emb = _tree(reqs[0].ids_emb[:p_emb], branches)
    labels = [-100] * p_llm + labels_tail
    return Packed(
        ids_emb,
        ids_llm,
        pos_emb,
        pos_llm,
        seg_emb,
        seg_llm,
        labels,
        reqs[0].pixel_values,
        reqs[0].tiles[0],
        summary_at=p_llm - 1,
        nouns=nouns,
    )


def _centre(o: Obj) -> tuple[float, float]:
    return (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _cell_targets(cells: torch.Tensor, scene: Scene) -> torch.Tensor:
    """Per cell (x0, y0, x1, y1; float64 (N, 4)): its coverage by each kind (the intersection with an object over
    the smaller one's area, 1 when one holds the other; the most over the kind's objects), whether it holds the
    centre of an object of each kind, and its centre (x, y) over the picture's size. Returns (N, REGION_CHANNELS)."""
    boxes = torch.tensor([o.box for o in scene.objects] or [(0, 0, 0, 0)], dtype=torch.float64)  # (M, 4)
    kinds = torch.tensor([[o.kind == k for k in KINDS] for o in scene.objects] or [[False] * len(KINDS)])  # (M, K)
    c, b = cells[:, None, :], boxes[None, :, :]  # (N, 1, 4), (1, M, 4)
    w = torch.minimum(c[..., 2], b[..., 2]) - torch.maximum(c[..., 0], b[..., 0])  # (N, M)
    h = torch.minimum(c[..., 3], b[..., 3]) - torch.maximum(c[..., 1], b[..., 1])
    small = torch.minimum(_area(c), _area(b))
    overlap = w.clamp(min=0) * h.clamp(min=0) / small.clamp(min=1e-9)  # (N, M), >= 0
    cover = torch.where(kinds[None], overlap[..., None], 0.0).amax(dim=1)  # (N, K)
    cx, cy = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2  # (1, M): the objects' centres
    holds = (c[..., 0] <= cx) & (cx < c[..., 2]) & (c[..., 1] <= cy) & (cy < c[..., 3])  # (N, M)
    centres = (holds[..., None] & kinds[None]).any(dim=1).double()  # (N, K)
    where = (cells[:, :2] + cells[:, 2:]) / 2 / torch.tensor([scene.width, scene.height], dtype=torch.float64)
    return torch.cat([cover, centres, where], dim=1)


def token_regions(scene: Scene, grid: tuple[int, int], tiles: int, per_side: int) -> torch.Tensor:
    """Auxiliary dense targets (REGION_CHANNELS per image token of the embedding sequence: tile-major, row-major
    inside a tile, the thumbnail last): what each token sees, where the objects' centres are (counting), and
    where in the whole picture the token is (a tile's place in the grid is otherwise only implied by order)."""
    cols, rows, w, h = *grid, scene.width, scene.height
    areas = [
        (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows) for r in range(rows) for c in range(cols)
    ]
    areas += [(0.0, 0.0, float(w), float(h))] * (tiles - cols * rows)  # the thumbnail sees the whole picture
    cells = []
    for x0, y0, x1, y1 in areas:
        tw, th = (x1 - x0) / per_side, (y1 - y0) / per_side
        cells += [
            (x0 + j * tw, y0 + i * th, x0 + (j + 1) * tw, y0 + (i + 1) * th)
            for i in range(per_side)
            for j in range(per_side)
        ]
    return _cell_targets(torch.tensor(cells, dtype=torch.float64), scene).float()


def _kind_facts(scene: Scene, k: str) -> tuple[list[float], list[float]]:
    """Whether kind k is there, its count / 3 and the centre (x, y) of its one object (weight 0 unless exactly one;
    positions weigh more: left/right is the hardest); then targets and weights."""
    n, one = scene.count(k), scene.the(k)
    x, y = _centre(one) if one else (0.0, 0.0)
    return [float(n > 0), n / 3, x / scene.width, y / scene.height], [1.0, 1.0, 4.0 * bool(one), 4.0 * bool(one)]


def _colour_facts(scene: Scene, k: str) -> tuple[list[float], list[float]]:
    """The colour of kind k's one object, one-hot over PALETTE (weight 0 unless one object of a coloured kind)."""
    one = scene.the(k) if k in COLOURED else None
    return [float(one is not None and one.colour == c) for c in PALETTE], [float(one is not None)] * len(PALETTE)


def scene_summary(scene: Scene) -> torch.Tensor:
    """Auxiliary targets for the LLM's state at </img>, which has seen the whole picture before any question: each
    kind's facts (`_kind_facts`); which kind is the biggest (weight 0 without a clear margin); the colour of each
    coloured kind's one object. The questions ask these of the picture; a target at </img> teaches the LLM to
    gather them where every question can read them (an x-position needs all the tiles, which no image token has
    seen). Returns (2, SUMMARY_CHANNELS): targets, weights."""
    target, weight = [], []
    for k in KINDS:
        t, w = _kind_facts(scene, k)
        target, weight = target + t, weight + w
    big = scene.biggest()
    target += [float(big is not None and big.kind == k) for k in KINDS]
    weight += [float(big is not None)] * len(KINDS)
    for k in COLOURED:
        t, w = _colour_facts(scene, k)
        target, weight = target + t, weight + w
    return torch.tensor([target, weight])


def noun_facts(scene: Scene, kinds: list[str]) -> torch.Tensor:
    """Auxiliary targets for the LLM's state at a kind's name in a question: that kind's facts and colour, so the
    name looks its object up in the picture and later layers compare what two names found ("Is the A left of the
    B?"). Returns (len(kinds), 2, NOUN_CHANNELS): targets, weights."""
    rows = []
    for k in kinds:
        (t, w), (tc, wc) = _kind_facts(scene, k), _colour_facts(scene, k)
        rows.append([t + tc, w + wc])
    return torch.tensor(rows).reshape(len(kinds), 2, NOUN_CHANNELS)


def scene_example(engine, seed: int, per_kind: dict[str, int] = PER_KIND) -> Packed:
    """The packed training example of scene `seed` (its questions drawn with the same seed)."""
    cfg = engine.cfg
    scene = random_scene(seed, cfg.image_size, cfg.max_dynamic_patch)
    qa = pick_questions(questions(scene), random.Random(seed), per_kind)
    if seed % 2:  # a caption costs as much as three short answers: on half of the pictures only
        qa = [x for x in qa if x[2] != "caption"]
    packed = pack(engine, np.asarray(render(scene)), qa)  # an array: each prompt skips the PIL conversion
    side = cfg.image_size // cfg.embedding.patch_size  # patches per tile side
    regions = token_regions(scene, tile_grid(scene, cfg.image_size, cfg.max_dynamic_patch), packed.tiles, side)
    if not cfg.is_hd:  # an embedding token holds 2x2 patches (pixel shuffle first): their four targets side by side
        regions = regions.reshape(packed.tiles, side // 2, 2, side // 2, 2, -1).permute(0, 1, 3, 2, 4, 5)
        regions = regions.reshape(-1, 4 * REGION_CHANNELS)
    packed.regions = regions
    packed.summary = scene_summary(scene)
    packed.noun_facts = noun_facts(scene, [k for _, k in packed.nouns])
    return packed
