"""The default model's training data and training: the scene generator's pictures and answers agree, the training
targets say what each scene shows and packing preprocesses each picture once, the wqkv exporter inverts the
reference's split, the training forward computes exactly what the reference computes, and a few training steps are
reproducible (tools/ and hovle/default_model/)."""

import dataclasses
import json
import random
import re

import pytest
import torch

from hovle import Engine
from hovle.default_model.folder import VARIANTS
from hovle.default_model.questions import plural, questions
from hovle.default_model.scenes import COLOURED, KINDS, PALETTE, random_scene, render, tile_grid
from hovle.reference.model import ReferenceHoVLE, load_tensors, split_wqkv
from tools.scene_data import answer_ids, noun_facts, pack, pick_questions, scene_summary, token_regions
from tools.train_default_model import Recipe, start_checkpoint, train, write_tokenizer
from tools.train_model import TrainableHoVLE, fuse_wqkv

TINY = Recipe(
    sizes=dict(hidden=32, intermediate=64, heads=2, kv_heads=1, emb_layers=1, llm_layers=1, image_size=56),
    vocab_size=400,
    corpus_scenes=60,
    steps=3,
    batch=2,
)


# ---- the scene generator ----------------------------------------------------------------------------------------


def test_scenes_cover_the_tilings_and_are_deterministic():
    tiles = {c * r for c, r in (tile_grid(random_scene(seed), 56) for seed in range(300))}
    assert {1, 2, 3, 4, 5, 6, 8, 9, 10, 12} <= tiles
    assert render(random_scene(7)).tobytes() == render(random_scene(7)).tobytes()


def test_scene_answers_match_the_picture():
    """Ground truth is about what is drawn: a named colour is the colour at the object's centre, left/right agree."""
    for seed in range(40):
        scene, img = random_scene(seed), None
        img = render(scene)
        for o in scene.objects:
            if o.kind in ("circle", "square"):
                cx, cy = (o.box[0] + o.box[2]) // 2, (o.box[1] + o.box[3]) // 2
                assert img.getpixel((cx, cy)) == PALETTE[o.colour]
        qa = questions(scene)
        for q, a, kind in qa:
            if kind == "colour":
                assert scene.the(q.split()[-1][:-1]) is not None and q.split()[-1][:-1] in COLOURED
            if q.startswith("Is the") and " left of " in q and a == "yes":
                assert (q.replace(" left of ", " right of "), "yes", "relation") not in qa


def test_scene_summary_targets_agree_with_the_answers():
    """The auxiliary targets at </img> say what the questions' answers say (presence, count, colour, the biggest)."""
    for seed in range(40):
        scene = random_scene(seed)
        (target, weight), answers = scene_summary(scene), {q: a for q, a, _ in questions(scene)}
        for i, k in enumerate(KINDS):
            assert target[4 * i] == (answers[f"Is there a {k}?"] == "yes") and weight[4 * i] == 1
            assert round(float(target[4 * i + 1]) * 3) == int(answers[f"How many {plural(k)} are there?"])
            assert bool(weight[4 * i + 2]) == (answers[f"How many {plural(k)} are there?"] == "1")
        big = torch.nonzero(target[4 * len(KINDS) : 5 * len(KINDS)])
        assert (
            [f"the {KINDS[int(i)]}" for i in big] == [answers["What is the biggest object?"]]
            if "What is the biggest object?" in answers
            else not weight[4 * len(KINDS)]
        )
        colours = target[5 * len(KINDS) :].reshape(len(COLOURED), len(PALETTE))
        for k, row in zip(COLOURED, colours):
            named = [c for c, on in zip(PALETTE, row) if on]
            assert named == ([answers[f"What colour is the {k}?"]] if f"What colour is the {k}?" in answers else [])


def test_noun_targets_sit_on_the_named_kinds(tiny_inits):
    """Every kind a question names gets a target at the last piece of its name (the tiny tokenizer splits names
    into pieces), and the target says what the answers say of that kind: presence, count, colour, and positions
    that order the objects as the left/right answers do."""
    eng = Engine.from_pretrained(tiny_inits["hovle"], device="cpu", dtype=torch.float32, backend="torch")
    words = {w: k for k in KINDS for w in (k, plural(k))}
    decode = lambda ids: eng.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    split = 0
    for seed in range(8):
        scene = random_scene(seed)
        qa = pick_questions(questions(scene), random.Random(seed), {"count": 2, "relation": 3, "colour": 1})
        packed = pack(eng, render(scene), qa)
        named = [w for q, _, _ in qa for w in re.findall(r"[a-z]+", q) if w in words]
        assert [k for _, k in packed.nouns] == [words[w] for w in named]
        for (i, _), w in zip(packed.nouns, named):
            assert re.search(rf"\b{w}\??$", decode(packed.ids_llm[: i + 1])), (w, decode(packed.ids_llm[: i + 1]))
            assert not decode(packed.ids_llm[:i]).endswith(w)
            split += len(eng.tokenizer.encode(" " + w, add_bos=False)) > 1
        facts = dict(zip(KINDS, noun_facts(scene, list(KINDS))))  # kind -> (targets, weights)
        answers = {q: a for q, a, _ in questions(scene)}
        for k, (t, w) in facts.items():
            n = int(answers[f"How many {plural(k)} are there?"])
            assert t[0] == (answers[f"Is there a {k}?"] == "yes") and round(float(t[1]) * 3) == n
            assert bool(w[2]) == bool(w[3]) == (n == 1)
            colour = [c for c, on in zip(PALETTE, t[4:]) if on and w[4]]
            assert colour == ([answers[f"What colour is the {k}?"]] if f"What colour is the {k}?" in answers else [])
        for q, a in answers.items():
            if m := re.fullmatch(r"Is the (\w+) (left|right) of the (\w+)\?", q):
                xa, xb = float(facts[m[1]][0][2]), float(facts[m[3]][0][2])
                assert (a == "yes") == ((xa < xb) == (m[2] == "left")), q
    assert split, "no name was split into pieces: the joining of pieces went untested"


def _plain_cell(cell: tuple, scene) -> list[float]:
    """One cell's region targets, object by object in plain Python (what token_regions computes for all at once)."""
    out = []
    for k in KINDS:
        best = 0.0
        for o in (o for o in scene.objects if o.kind == k):
            w = min(cell[2], o.box[2]) - max(cell[0], o.box[0])
            h = min(cell[3], o.box[3]) - max(cell[1], o.box[1])
            small = min((cell[2] - cell[0]) * (cell[3] - cell[1]), o.area)
            best = max(best, max(w, 0.0) * max(h, 0.0) / max(small, 1e-9))
        out.append(best)
    for k in KINDS:
        centres = [((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in scene.objects if o.kind == k]
        out.append(float(any(cell[0] <= x < cell[2] and cell[1] <= y < cell[3] for x, y in centres)))
    return out + [(cell[0] + cell[2]) / 2 / scene.width, (cell[1] + cell[3]) / 2 / scene.height]


def test_region_targets_say_what_each_cell_shows():
    """token_regions, cell by cell against the plain computation: every tile's cells and the thumbnail's (which
    sees the whole picture), on tilings from 1 to 12 tiles; every object's centre lies in a cell that says so."""
    for seed in range(12):
        scene, side = random_scene(seed), 4
        cols, rows = tile_grid(scene, 56)
        tiles = cols * rows + (cols * rows > 1)
        got = token_regions(scene, (cols, rows), tiles, side)
        assert got.shape == (tiles * side * side, 2 * len(KINDS) + 2) and got.dtype == torch.float32
        tw, th = scene.width / cols / side, scene.height / rows / side
        for t in range(tiles):
            thumb = t == cols * rows
            cw, ch = (scene.width / side, scene.height / side) if thumb else (tw, th)
            x0, y0 = (0.0, 0.0) if thumb else (t % cols * scene.width / cols, t // cols * scene.height / rows)
            for i in range(side):
                for j in range(side):
                    cell = (x0 + j * cw, y0 + i * ch, x0 + (j + 1) * cw, y0 + (i + 1) * ch)
                    want = torch.tensor(_plain_cell(cell, scene))
                    torch.testing.assert_close(got[(t * side + i) * side + j], want, rtol=1e-6, atol=1e-6)
        centres = got[: cols * rows * side * side, len(KINDS) : 2 * len(KINDS)]
        for k, column in zip(KINDS, centres.T):
            assert 0 < column.sum() <= scene.count(k) if scene.count(k) else column.sum() == 0, k


def test_packing_preprocesses_each_picture_once(tiny_inits, monkeypatch):
    """All prompts of one picture get its tiles from a single preprocessing pass, and the engine's own method is
    back in place after packing (a later request preprocesses its image again)."""
    eng = Engine.from_pretrained(tiny_inits["hovle-hd"], device="cpu", dtype=torch.float32, backend="torch")
    calls, real = [], type(eng.builder)._image
    monkeypatch.setattr(type(eng.builder), "_image", lambda self, *a: calls.append(a) or real(self, *a))
    scene = random_scene(3)
    qa = pick_questions(questions(scene), random.Random(3), {"count": 2, "presence": 2, "colour": 1})
    packed = pack(eng, render(scene), qa)
    assert len(qa) >= 4 and len(calls) == 1 and "_image" not in vars(eng.builder)
    alone = eng.prepare([{"role": "user", "content": qa[-1][0]}], [render(scene)])
    assert torch.equal(packed.pixel_values, alone.pixel_values)
    assert len(calls) == 2


# ---- training ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads,n_kv,head_dim", [(4, 2, 16), (6, 2, 8), (4, 4, 8), (8, 2, 4), (3, 1, 8)])
def test_fuse_wqkv_inverts_split(n_heads, n_kv, head_dim):
    w = torch.randn((n_heads + 2 * n_kv) * head_dim, 24)
    q, k, v = split_wqkv(w, n_heads, n_kv, head_dim)
    assert torch.equal(fuse_wqkv(q, k, v, n_heads, n_kv), w)
    q2, k2, v2 = split_wqkv(fuse_wqkv(q, k, v, n_heads, n_kv), n_heads, n_kv, head_dim)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


@pytest.fixture(scope="module")
def tiny_inits(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_train")
    write_tokenizer(root / "tokenizer", TINY)
    return {v: start_checkpoint(root, v, TINY, root / "tokenizer") for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_round_trips_every_tensor(tiny_inits, variant):
    tensors = load_tensors(str(tiny_inits[variant]))
    config = json.loads((tiny_inits[variant] / "config.json").read_text())
    out = TrainableHoVLE(config, tensors).released_tensors()
    assert sorted(out) == sorted(tensors)
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_training_forward_matches_the_reference(tiny_inits, variant):
    """Two pictures, three questions each, tree-packed and padded into one batch: the logits at every answer
    position equal the independent reference's on each prompt + answer alone (HD: both sequences)."""
    path = tiny_inits[variant]
    eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, backend="torch")
    model = TrainableHoVLE(json.loads((path / "config.json").read_text()), load_tensors(str(path)))
    batch, expected = [], []
    for seed in (3, 11):
        scene = random_scene(seed)
        qa = pick_questions(questions(scene), random.Random(seed), {"colour": 1, "count": 1, "caption": 1})
        img = render(scene)
        batch.append(pack(eng, img, qa))
        for q, a, _ in qa:
            req = eng.prepare([{"role": "user", "content": q}], [img])
            ans = answer_ids(eng.tokenizer, a)
            ref = ReferenceHoVLE.from_dir(str(path)).prefill(req.ids_emb + ans, req.ids_llm + ans, req.pixel_values)
            expected.append(ref[len(req.ids_llm) - 1 : len(req.ids_llm) - 1 + len(ans)])
    with torch.no_grad():
        logits, labels, _ = model(batch)
    expected = torch.cat(expected)
    assert logits.shape == expected.shape
    assert float((logits - expected).abs().max() / expected.abs().max()) < 1e-5


def test_training_is_reproducible(tiny_inits):
    first = train(tiny_inits["hovle-hd"], TINY, log=lambda s: None).released_tensors()
    second = train(tiny_inits["hovle-hd"], TINY, log=lambda s: None).released_tensors()
    start = load_tensors(str(tiny_inits["hovle-hd"]))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["language_model.output.weight"], start["language_model.output.weight"])


def test_evaluate_cli_refuses_bad_input_before_any_work(tmp_path, capsys):
    """No scenes, or a folder without a checkpoint: exit 2 with the input and the expectation named."""
    from tools import evaluate

    cases = [
        ([str(tmp_path), "--scenes", "0"], "--scenes 0: expected a positive"),
        ([str(tmp_path)], f"model {tmp_path}: {tmp_path}/config.json: not found"),
    ]
    for argv, said in cases:
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_recipe_overrides_merge_into_the_shipped_recipe():
    from tools.train_default_model import recipe_from

    assert recipe_from(None) == Recipe()
    got = recipe_from('{"lr": 0.004, "steps": 3250, "sizes": {"hidden": 64, "heads": 2, "kv_heads": 1}}')
    assert got == dataclasses.replace(
        Recipe(), lr=0.004, steps=3250, sizes={**Recipe().sizes, "hidden": 64, "heads": 2, "kv_heads": 1}
    )


def test_train_cli_refuses_a_bad_recipe_before_any_work(tmp_path, capsys):
    """Each bad --recipe exits 2 naming the field and what was expected (the sizes through the engine's own config
    checks); nothing is written to --out."""
    from tools import train_default_model

    cases = [
        ("x", "is not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"lrr": 1}', "unknown ['lrr']"),
        ('{"sizes": {"hiden": 3}}', "unknown ['sizes.hiden']"),
        ('{"sizes": 3}', "sizes=3: expected an object"),
        ('{"lr": 0}', "lr=0: expected a positive number"),
        ('{"steps": 2.5}', "steps=2.5: expected a positive"),
        ('{"batch": true}', "batch=True: expected a positive integer"),
        ('{"sizes": {"hidden": 100, "heads": 3}}', "expected heads to divide hidden"),
        ('{"sizes": {"hidden": 96, "heads": 32}}', "into an even head_dim"),
        ('{"sizes": {"image_size": 50}}', "image size 50 must be an even multiple of patch_size 14"),
    ]
    for text, said in cases:
        with pytest.raises(SystemExit) as exit_:
            train_default_model.main(["--out", str(tmp_path / "out"), "--recipe", text])
        assert exit_.value.code == 2 and said in capsys.readouterr().err, text
    assert not (tmp_path / "out").exists()
