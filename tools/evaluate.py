"""Held-out accuracy of a trained default model: scenes the training never saw, greedy answers, exact match.

    .venv/bin/python -m tools.evaluate hovle/data/default-model/hovle [--scenes 100] [--wrong]

Prints the accuracy per question kind and per question template (the kind names replaced by X), the numbers the
README's table and the closing notes quote; --wrong lists every wrong answer.
"""

from __future__ import annotations

import argparse
import random
import re

import torch

from hovle import Engine
from hovle.default_model.questions import questions
from hovle.default_model.scenes import random_scene, render
from hovle.errors import HoVLEError

from .scene_data import HELD_OUT_SEED, pick_questions

EVAL_PER_KIND = {"colour": 1, "count": 1, "presence": 1, "relation": 1, "biggest": 1}


def held_out(n_scenes: int, tile_size: int, max_num: int = 12, per_kind: dict[str, int] = EVAL_PER_KIND) -> list:
    """(image, question, answer, kind) for scenes the training never saw (seeds from HELD_OUT_SEED on)."""
    items = []
    for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + n_scenes):
        scene = random_scene(seed, tile_size, max_num)
        image = render(scene)
        items += [(image, q, a, k) for q, a, k in pick_questions(questions(scene), random.Random(seed), per_kind)]
    return items


def answers(engine, items: list, batch: int = 64, max_new_tokens: int = 12) -> list[str]:
    """The engine's greedy answer to each (image, question, ...) item, in order."""
    out = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        results = engine.generate([x[1] for x in chunk], [x[0] for x in chunk], max_new_tokens=max_new_tokens)
        out += [r.text for r in results]
    return out


def tally(items: list, texts: list[str], key=lambda item: item[3]) -> dict[str, tuple[int, int]]:
    """Exact-match counts of the answers `texts` to items, grouped by key(item) (the question kind by default):
    group -> (correct, total)."""
    out: dict[str, tuple[int, int]] = {}
    for item, text in zip(items, texts):
        ok, n = out.get(key(item), (0, 0))
        out[key(item)] = (ok + (text == item[2]), n + 1)
    return out


def score(engine, items: list, batch: int = 64, max_new_tokens: int = 12) -> dict[str, tuple[int, int]]:
    """Greedy answers of `engine` to items, exact match: kind -> (correct, total)."""
    return tally(items, answers(engine, items, batch, max_new_tokens))


def template(question: str) -> str:
    """The question with the kind names replaced by X ("Is the X left of the X?")."""
    return re.sub(r"many \w+", "many X", re.sub(r"(the|a) (\w+)", r"\1 X", question))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a trained checkpoint folder")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--wrong", action="store_true", help="list every wrong answer")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes {args.scenes}: expected a positive number of scenes")
    try:
        engine = Engine.from_pretrained(args.model, device="cpu", dtype=torch.float32, backend="torch")
    except HoVLEError as exc:
        parser.error(f"model {args.model}: {exc}")
    items = held_out(args.scenes, engine.cfg.image_size, engine.cfg.max_dynamic_patch)
    texts = answers(engine, items)
    by_kind = tally(items, texts)
    groups = [(k, by_kind[k]) for k in EVAL_PER_KIND if k in by_kind]
    groups += sorted(tally(items, texts, key=lambda item: template(item[1])).items())
    for name, (ok, n) in groups:
        print(f"{name:48s} {ok:4d}/{n:<4d} {ok / n:6.1%}")
    right = sum(ok for ok, _ in by_kind.values())
    print(f"{'all':48s} {right:4d}/{len(items):<4d} {right / len(items):6.1%}")
    wrong = [f"  {q!r}: {t!r}, expected {a!r}" for (_, q, a, _), t in zip(items, texts) if t != a]
    print("\n".join(wrong) if args.wrong else f"{len(wrong)} wrong (--wrong lists them)")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
