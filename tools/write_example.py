"""Writes hovle/data/example.png and hovle/data/example_questions.json from the scene generator.

    .venv/bin/python -m tools.write_example

The picture is `scenes.example_scene()` rendered by `scenes.render` (a scene the generator could have produced:
house, tree, sun, cloud, path); the answers come from `questions.questions`, the generator's own ground truth.
"""

from __future__ import annotations

import json

from hovle.default_model.folder import EXAMPLE_IMAGE, EXAMPLE_QUESTIONS
from hovle.default_model.questions import questions
from hovle.default_model.scenes import example_scene, render

ASKED = ("What colour is the house?", "How many trees are there?", "Is the house left of the tree?")


def example_entries() -> list[dict[str, str]]:
    truth = {q: (a, kind) for q, a, kind in questions(example_scene())}
    return [{"question": q, "answer": truth[q][0], "kind": truth[q][1]} for q in ASKED]


def main() -> int:
    render(example_scene()).save(EXAMPLE_IMAGE, optimize=True)
    scene = "hovle.default_model.scenes.example_scene()"
    doc = {"image": EXAMPLE_IMAGE.name, "scene": scene, "questions": example_entries()}
    EXAMPLE_QUESTIONS.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {EXAMPLE_IMAGE} and {EXAMPLE_QUESTIONS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
