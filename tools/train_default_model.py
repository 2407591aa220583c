"""Trains the embedded default model (HoVLE and HoVLE-HD) on procedural scenes, on the CPU, reproducibly.

    .venv/bin/python -m tools.train_default_model                 # both variants -> hovle/data/default-model/
    .venv/bin/python -m tools.train_default_model --variant hovle --steps 200 --out /tmp/m
    .venv/bin/python -m tools.train_default_model --variant hovle --recipe '{"lr": 4e-3}' --out /tmp/m

Steps: train a SentencePiece tokenizer on the scenes' questions, answers and captions (plus the chat template's
words), write a random checkpoint in the released layout with it (`write_default_model`), then train every weight
on tree-packed question/answer sequences built by `Engine.prepare` (loss on the answer and <|im_end|> only), and
write the result with `write_checkpoint`. Everything is seeded and the data order is fixed (scene seeds in order),
with a fixed thread count, so the same command gives the same weights on the same torch version.

Three training-only targets (heads that are never exported) teach the model where things are: every image token of
the embedding stack predicts what its patches show (`token_regions`); the LLM's state at </img>, the first place
that has seen every tile, predicts each kind's presence, count, position and colour and the biggest object
(`scene_summary`); and the LLM's state at each kind's name in a question predicts the same facts of that kind
(`noun_facts`). The first two took HoVLE's held-out "What is just left of the B?" from chance to 84%, but "Is the A
left of the B?" stayed at chance until the name target was added (one run each; the README has the shipped
models' accuracy per kind). More steps helped HoVLE every time: 2,900 steps gave 88.2% held-out, 3,600 89.9%,
5,000 (the recipe) 93.8%.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from hovle import Engine
from hovle.default_model.checkpoint import write_checkpoint
from hovle.default_model.folder import VARIANTS, config_dict, tokenizer_files, write_default_model
from hovle.default_model.tokenizer_trainer import write_tokenizer_files
from hovle.families.hovle.config import HoVLEConfig
from hovle.reference.model import load_tensors

from .scene_data import Packed, corpus_lines, scene_example
from .train_model import TrainableHoVLE

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "hovle" / "data" / "default-model"
THREADS = 2
WARM_FIRST_SEED = 1_000_000  # a warm-started variant trains on scenes its starting model never saw


@dataclass(frozen=True)
class Recipe:
    """Model sizes and optimisation settings (the defaults are the shipped model's)."""

    sizes: dict = field(
        default_factory=lambda: dict(
            hidden=128, intermediate=384, heads=4, kv_heads=2, emb_layers=2, llm_layers=4, image_size=56
        )
    )
    vocab_size: int = 768
    corpus_scenes: int = 3000
    steps: int = 5000
    warm_steps: int = 2300  # a variant warm-started from a trained one (HoVLE-HD: its steps cost more)
    batch: int = 12  # images per step, each with its packed questions
    chunks: int = 2  # the step's images sorted by length and run in this many padded forwards (less padding)
    first_seed: int = 0  # scene seeds first_seed + step * batch + i (a warm-started variant: WARM_FIRST_SEED)
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0


# Recipe fields that may be 0 (the rest count something or scale the steps, and must be positive).
_MAY_BE_ZERO = ("warmup", "weight_decay", "first_seed", "seed")


def recipe_from(text: str | None) -> Recipe:
    """The shipped recipe with the overrides of a JSON object, e.g. '{"lr": 4e-3, "sizes": {"hidden": 64}}' (sizes
    merge into the shipped sizes). ValueError, naming the field, for anything else."""
    r = Recipe()
    if text is None:
        return r
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--recipe {text!r} is not JSON ({e.msg}); expected an object of recipe fields") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--recipe {text!r}: expected a JSON object of recipe fields")
    names = [f.name for f in fields(Recipe)]
    unknown = sorted(set(overrides) - set(names))
    sizes = overrides.pop("sizes", {})
    if not isinstance(sizes, dict):
        raise ValueError(f"--recipe sizes={sizes!r}: expected an object such as '{{\"hidden\": 64}}'")
    unknown += sorted(f"sizes.{k}" for k in set(sizes) - set(r.sizes))
    if unknown:
        raise ValueError(f"--recipe: unknown {unknown}; expected fields {names} and sizes {sorted(r.sizes)}")
    for name, value in [*overrides.items(), *sizes.items()]:
        kind = float if isinstance(getattr(r, name, None), float) else int  # as the shipped value (sizes: int)
        least = 0 if name in _MAY_BE_ZERO else 1e-12 if kind is float else 1
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value < least:
            need = "non-negative" if least == 0 else "positive"
            raise ValueError(f"--recipe {name}={value!r}: expected a {need} {'number' if kind is float else 'integer'}")
    out = replace(r, **overrides, sizes={**r.sizes, **sizes})
    for variant in VARIANTS:  # the engine's own config checks (head split, tile geometry), before any work
        HoVLEConfig.from_dict(config_dict(variant, **out.sizes), source=f"--recipe sizes {out.sizes}")
    return out


def lr_at(step: int, r: Recipe) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def write_tokenizer(dst: Path, r: Recipe) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(corpus_lines(r.corpus_scenes, r.sizes["image_size"])) + "\n", encoding="utf-8")
        write_tokenizer_files(dst, corpus, r.vocab_size)


def start_checkpoint(dst: Path, variant: str, r: Recipe, tokenizer_dir: Path) -> Path:
    """The random starting checkpoint (released layout) under dst, with the tokenizer of `tokenizer_dir`."""
    return write_default_model(dst / f"init-{variant}", variant, tokenizer_dir=tokenizer_dir, overwrite=True, **r.sizes)


def step_batch(engine: Engine, r: Recipe, step: int) -> list[Packed]:
    """The scenes of `step` (seeds first_seed + step * batch + i), packed, shortest first."""
    seeds = range(r.first_seed + step * r.batch, r.first_seed + (step + 1) * r.batch)
    return sorted((scene_example(engine, seed) for seed in seeds), key=lambda p: len(p.ids_emb))


def batches(init: Path, r: Recipe) -> Iterator[list[Packed]]:
    """Every step's batch in order, built between the steps. (A worker process building them ahead ran slower on
    2 cores: it took a core from the training's two threads, and each of their parallel ops waits for the slower.)"""
    engine = Engine.from_pretrained(init, device="cpu", dtype=torch.float32, backend="torch")
    return (step_batch(engine, r, step) for step in range(r.steps))


def _step_loss(model: TrainableHoVLE, batch: list[Packed], chunks: int) -> float:
    """The batch in `chunks` padded forwards (it is sorted by length: less padding); gradients accumulate."""
    size, total = -(-len(batch) // chunks), 0.0
    for i in range(0, len(batch), size):
        loss = model.loss(batch[i : i + size]) / chunks
        loss.backward()
        total += float(loss.detach())
    return total


def train(init: Path, r: Recipe, log=print, start: dict | None = None) -> TrainableHoVLE:
    """Trains from the checkpoint folder `init` (its config, tokenizer and weights, or the weights `start` under
    the same names: HoVLE-HD starts from the trained HoVLE, whose tensors have the same names and shapes)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # some backward ops (scatter/index) otherwise add in any order
    try:
        return _train(init, r, log, start)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(init: Path, r: Recipe, log, start: dict | None) -> TrainableHoVLE:
    torch.manual_seed(r.seed)
    config = json.loads((init / "config.json").read_text())
    model = TrainableHoVLE(config, start if start is not None else load_tensors(str(init)))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=r.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    t0, running = time.perf_counter(), None
    for step, batch in enumerate(batches(init, r)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        opt.zero_grad(set_to_none=True)
        value = _step_loss(model, batch, r.chunks)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == r.steps - 1:
            log(f"step {step:5d}  loss {running:.4f}  lr {lr_at(step, r):.2e}  {time.perf_counter() - t0:7.1f}s")
    return model


def save(model: TrainableHoVLE, init: Path, dst: Path) -> Path:
    """The trained weights in the released layout, with the starting checkpoint's config and tokenizer files."""
    return write_checkpoint(
        dst,
        model.config,
        model.released_tensors(),
        max_shard_bytes=4 << 20,
        extra_files=tokenizer_files(init),
        overwrite=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="both", choices=(*VARIANTS, "both"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes <out>/<variant>/")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per variant (default {Recipe.steps}; {Recipe.warm_steps} when warm-started)",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        default=None,
        help="a trained checkpoint folder of the same sizes to start from (with --variant both, "
        "HoVLE-HD starts from the HoVLE just trained)",
    )
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="JSON",
        help='overrides of the shipped recipe: \'{"lr": 4e-3, "sizes": {"hidden": 64}}\'',
    )
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: expected a positive number of steps")
    try:
        recipe = recipe_from(args.recipe)
    except ValueError as e:
        parser.error(str(e))
    torch.set_num_threads(THREADS)
    start = load_tensors(str(args.start_from)) if args.start_from else None
    work = Path(tempfile.mkdtemp(prefix="hovle-train-"))
    try:
        tok_dir = work / "tokenizer"
        write_tokenizer(tok_dir, recipe)
        for variant in VARIANTS if args.variant == "both" else (args.variant,):
            t0 = time.perf_counter()
            init = start_checkpoint(work, variant, recipe, tok_dir)
            r = (
                replace(recipe, steps=args.steps or recipe.steps)
                if start is None
                else replace(recipe, steps=args.steps or recipe.warm_steps, first_seed=WARM_FIRST_SEED)
            )
            model = train(init, r, log=lambda s, v=variant: print(f"[{v}] {s}", flush=True), start=start)
            out = save(model, init, args.out / variant)
            start = model.released_tensors()
            print(f"[{variant}] wrote {out} after {time.perf_counter() - t0:.0f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
