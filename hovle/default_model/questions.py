"""What is asked of a generated scene, and its right answer: the training and evaluation questions of the embedded
default model (colour, count, presence, relations, the biggest object) and the one-sentence caption, all derived
from the scene's own objects (hovle/default_model/scenes.py)."""

from __future__ import annotations

from .scenes import COLOURED, GROUND_KINDS, KINDS, NUMBER_WORDS, SKY_KINDS, YES_NO, Obj, Scene


def plural(kind: str) -> str:
    return kind + "es" if kind.endswith("s") else kind + "s"


def _left(a: Obj, b: Obj, width: int) -> bool:
    """a is clearly left of b: no overlap and centres at least a third of the picture apart."""
    return a.box[2] <= b.box[0] and (b.box[0] + b.box[2]) - (a.box[0] + a.box[2]) >= 2 * width / 3


def _relations(scene: Scene) -> list[tuple[str, str, str]]:
    unique = [o for o in scene.objects if scene.the(o.kind) is o]
    qa = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            if _left(a, b, scene.width) or _left(b, a, scene.width):
                qa.append((f"Is the {a.kind} left of the {b.kind}?", YES_NO[_left(a, b, scene.width)], "relation"))
                qa.append((f"Is the {a.kind} right of the {b.kind}?", YES_NO[_left(b, a, scene.width)], "relation"))
            if (a.kind in SKY_KINDS) != (b.kind in SKY_KINDS):
                qa.append((f"Is the {a.kind} above the {b.kind}?", YES_NO[a.kind in SKY_KINDS], "relation"))
    row = sorted((o for o in scene.objects if o.kind in GROUND_KINDS), key=lambda o: o.box[0])
    for left, right in zip(row, row[1:]):
        if scene.the(right.kind):
            qa.append((f"What is just left of the {right.kind}?", f"the {left.kind}", "relation"))
        if scene.the(left.kind):
            qa.append((f"What is just right of the {left.kind}?", f"the {right.kind}", "relation"))
    return qa


def _list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
    """One sentence listing what is on the grass and in the sky, kinds in a fixed order."""

    def part(kinds):
        out = []
        for k in kinds:
            n, one = scene.count(k), scene.the(k)
            if n:
                out.append(
                    f"a {one.colour} {k}"
                    if one and k in COLOURED
                    else f"a {k}"
                    if one
                    else f"{NUMBER_WORDS[n]} {plural(k)}"
                )
        return out

    ground, sky = part(GROUND_KINDS), part(SKY_KINDS)
    text = _list(ground) + " on the grass" + (f", with {_list(sky)} in the sky." if sky else " under a clear sky.")
    return text[0].upper() + text[1:]


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """Every (question, answer, kind) the scene answers; kind is colour, count, presence, relation, biggest, caption."""
    qa = [(f"What colour is the {k}?", scene.the(k).colour, "colour") for k in COLOURED if scene.the(k)]
    qa += [(f"How many {plural(k)} are there?", str(scene.count(k)), "count") for k in KINDS]
    qa += [(f"Is there a {k}?", YES_NO[scene.count(k) > 0], "presence") for k in KINDS]
    qa += _relations(scene)
    if (big := scene.biggest()) is not None:
        qa.append(("What is the biggest object?", f"the {big.kind}", "biggest"))
    qa.append(("Describe the image in one sentence.", caption(scene), "caption"))
    return qa
