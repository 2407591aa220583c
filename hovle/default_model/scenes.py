"""Procedural picture-book scenes with known answers: the data the embedded default model is trained and tested on.

Sky over grass; houses, trees, cars, circles, squares and triangles stand on the grass in one row, a sun and clouds
float above them, most at least half a tile across (one LLM image token; smaller ones blur away in 56 px tiles).
Everything a question asks is decided when drawn, so `questions(scene)` is ground truth, one short answer each:
colours only of a kind that occurs once, no overlap in x, sky above ground, "left of" needs a clear gap and "the
biggest" a clear margin. A scene is sized for a target grid (1 to 12 tiles) until the engine's tiling (`choose_grid`)
picks it. All randomness comes from one `random.Random(seed)`: same seed, same scene.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ..loaders.image import choose_grid

PALETTE = {
    "red": (205, 50, 45),
    "orange": (240, 135, 30),
    "yellow": (245, 210, 40),
    "blue": (45, 85, 205),
    "purple": (135, 60, 175),
    "pink": (240, 125, 185),
    "white": (245, 245, 240),
}
GROUND_KINDS = ("house", "car", "tree", "circle", "square", "triangle")
SKY_KINDS = ("sun", "cloud")
KINDS = GROUND_KINDS + SKY_KINDS
COLOURED = ("house", "car", "circle", "square", "triangle")  # the kinds whose colour varies (and can be asked)
MAX_COUNT = {"house": 2, "car": 2, "tree": 3, "circle": 2, "square": 2, "triangle": 2, "sun": 1, "cloud": 3}
NUMBER_WORDS, YES_NO = ("no", "a", "two", "three"), ("no", "yes")  # YES_NO is indexed by a bool
MAX_ASPECT = 5  # grids up to 5:1 / 1:5 (12:1 strips are not pictures)
GROUND_TOP, SKY_BOTTOM = 0.5, 0.45  # fractions of the horizon's height: ground objects below, sky objects above
# (height range in tiles, width/height) for houses, trees, cars; (width range, height/width) for the shapes
GROUND_SIZES = {
    "house": ((0.45, 1.25), (0.8, 1.2)),
    "tree": ((0.5, 1.3), (0.45, 0.6)),
    "car": ((0.4, 0.6), (1.9, 2.3)),
    "circle": ((0.45, 0.85), (1, 1)),
    "square": ((0.45, 0.85), (1, 1)),
    "triangle": ((0.45, 0.85), (0.8, 1.0)),
}
SKY_TOP, BROWN, GLASS, OUTLINE = (70, 130, 220), (110, 70, 45), (165, 205, 245), (35, 35, 40)


@dataclass(frozen=True)
class Obj:
    kind: str
    colour: str  # the name of its main colour (PALETTE for COLOURED kinds; fixed for trees, suns, clouds)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    horizon: int  # first row of grass
    path: int | None  # top row of the sand path across the grass, or None
    objects: tuple[Obj, ...]
    sky: tuple[int, int, int] = SKY_TOP
    grass: tuple[int, int, int] = (75, 150, 60)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.objects)

    def the(self, kind: str) -> Obj | None:
        """The object of `kind` when there is exactly one (only those can be named "the <kind>")."""
        found = [o for o in self.objects if o.kind == kind]
        return found[0] if len(found) == 1 else None

    def biggest(self) -> Obj | None:
        """The biggest object when its area beats the runner-up's by 30% (else that question has no clear answer)."""
        by_area = sorted(self.objects, key=lambda o: -o.area)
        return by_area[0] if len(by_area) == 1 or by_area[0].area >= 1.3 * by_area[1].area else None


def grid_sizes(max_num: int = 12) -> list[tuple[int, int]]:
    return [
        (c, r)
        for c in range(1, max_num + 1)
        for r in range(1, max_num + 1)
        if c * r <= max_num and max(c / r, r / c) <= MAX_ASPECT
    ]


def _image_size(rng: random.Random, tile_size: int, max_num: int) -> tuple[int, int, float]:
    """(width, height, px per tile) for a random grid that the engine's tiling really picks (exact tie rules)."""
    while True:
        cols, rows = rng.choice(grid_sizes(max_num))
        for _ in range(20):
            t = tile_size * math.exp(rng.uniform(math.log(0.8), math.log(3.0)))
            w, h = round(cols * t), round(rows * t)
            if choose_grid(w, h, min_num=1, max_num=max_num, image_size=tile_size) == (cols, rows):
                return w, h, t


def _ground_shape(rng: random.Random, kind: str, t: float) -> tuple[float, float]:
    """(width, height) of a ground object in units of the tile size t (so an object spans one to a few of the
    model's image tokens whatever the picture's size); ranges overlap so that 'the biggest' varies."""
    (lo, hi), (alo, ahi) = GROUND_SIZES[kind]
    size, aspect = t * rng.uniform(lo, hi), rng.uniform(alo, ahi)
    return (size * aspect, size) if kind in ("house", "tree", "car") else (size, size * aspect)


def _pick_kinds(rng: random.Random, n: int, pool: tuple[str, ...]) -> list[str]:
    """n kinds; a kind already chosen is repeated 35% of the time, so counts of 2 and 3 are common enough."""
    kinds: list[str] = []
    while len(kinds) < n:
        options = [k for k in pool if kinds.count(k) < MAX_COUNT[k]]
        if not options:
            break
        again = [k for k in options if k in kinds]
        kinds.append(rng.choice(again if again and rng.random() < 0.35 else options))
    return kinds


def _row(rng: random.Random, sizes: list[tuple[float, float]], width: int) -> list[float] | None:
    """Left edges of objects laid out left to right without overlap, or None when they do not fit."""
    gap = 0.03 * width
    free = width - sum(w for w, _ in sizes) - gap * (len(sizes) + 1)
    if free < 0:
        return None
    weights = [rng.random() for _ in range(len(sizes) + 1)]
    xs, x = [], 0.0
    for (w, _), share in zip(sizes, weights):
        x += gap + free * share / sum(weights)
        xs.append(x)
        x += w
    return xs


def _ground_objects(rng: random.Random, w: int, h: int, t: float, horizon: int) -> list[Obj]:
    cap = max(1, min(6, int(w / (0.5 * t))))
    while True:
        kinds = _pick_kinds(rng, rng.randint(1, cap), GROUND_KINDS)
        rng.shuffle(kinds)
        sizes = [_ground_shape(rng, k, t) for k in kinds]
        xs = _row(rng, sizes, w)
        if xs is not None:
            break
    out, top_limit = [], GROUND_TOP * horizon
    for kind, (w0, h0), x in zip(kinds, sizes, xs):
        bottom = rng.uniform(horizon + 0.15 * (h - horizon), h - 0.1 * (h - horizon))
        scale = min(1.0, (bottom - top_limit) / h0)  # tall objects on a short picture shrink to fit
        ow, oh = w0 * scale, h0 * scale
        x += (w0 - ow) / 2  # shrunk about the centre of its slot in the row
        colour = rng.choice(list(PALETTE)) if kind in COLOURED else ("green" if kind == "tree" else "white")
        out.append(Obj(kind, colour, (round(x), round(bottom - oh), round(x + ow), round(bottom))))
    return out


def _sky_objects(rng: random.Random, w: int, h: int, t: float, horizon: int) -> list[Obj]:
    """A sun and clouds in the band above every ground object's top (so 'above' always holds for them); on a wide
    strip they shrink to the band's height, and objects are dropped until the row fits."""
    top, bottom = 0.03 * h, SKY_BOTTOM * horizon
    kinds = (["sun"] if rng.random() < 0.6 else []) + ["cloud"] * rng.randint(0, 3)
    rng.shuffle(kinds)
    while True:
        sizes = [
            (d, d) if k == "sun" else (2.4 * d, 2.4 * d * rng.uniform(0.38, 0.5))
            for k in kinds
            for d in [min(t * rng.uniform(0.35, 0.65), 0.78 * (bottom - top))]
        ]
        xs = _row(rng, sizes, w)
        if xs is not None:
            break
        kinds = kinds[:-1]
    return [
        Obj(k, "yellow" if k == "sun" else "white", (round(x), round(y), round(x + ow), round(y + oh)))
        for k, (ow, oh), x in zip(kinds, sizes, xs)
        for y in [rng.uniform(top, bottom - oh)]
    ]


def tile_grid(scene: Scene, tile_size: int, max_num: int = 12) -> tuple[int, int]:
    """The (cols, rows) grid the engine's dynamic tiling cuts this scene's picture into."""
    return choose_grid(scene.width, scene.height, min_num=1, max_num=max_num, image_size=tile_size)


def random_scene(seed: int, tile_size: int = 56, max_num: int = 12) -> Scene:
    """The scene of `seed`, sized for tiles of `tile_size` px and at most `max_num` tiles."""
    rng = random.Random(seed)
    w, h, t = _image_size(rng, tile_size, max_num)
    horizon = round(h * rng.uniform(0.5, 0.7))
    objects = _ground_objects(rng, w, h, t, horizon) + _sky_objects(rng, w, h, t, horizon)
    path = round(horizon + (h - horizon) * rng.uniform(0.3, 0.85)) if rng.random() < 0.5 else None
    jitter = lambda c: tuple(min(255, max(0, v + rng.randint(-15, 15))) for v in c)  # noqa: E731
    return Scene(w, h, horizon, path, tuple(objects), jitter(SKY_TOP), jitter((75, 150, 60)))


def example_scene() -> Scene:
    """The bundled example picture (hovle/data/example.png): house, tree, sun, cloud and a path, 640x480."""
    objects = (
        Obj("house", "red", (140, 180, 360, 380)),
        Obj("tree", "green", (420, 190, 520, 380)),
        Obj("sun", "yellow", (500, 40, 591, 131)),
        Obj("cloud", "white", (80, 40, 221, 96)),
    )
    return Scene(640, 480, 330, 395, objects)


def _draw(d: ImageDraw.ImageDraw, o: Obj) -> None:
    x0, y0, x1, y1 = o.box
    w, h, c = x1 - x0, y1 - y0, PALETTE.get(o.colour, (245, 245, 245))
    edge, dark = max(1, round(min(w, h) * 0.02)), tuple(v // 2 for v in PALETTE.get(o.colour, BROWN))
    if o.kind == "house":
        wall_top, inset = y0 + 0.38 * h, 0.08 * w
        d.polygon([(x0, wall_top), (x0 + w / 2, y0), (x1, wall_top)], fill=BROWN, outline=(66, 42, 27))
        d.rectangle([x0 + inset, wall_top, x1 - inset, y1 - 1], fill=c, outline=dark, width=edge)
        for fx in (0.2, 0.65):
            wx, wy, ws = x0 + fx * w, wall_top + 0.12 * h, 0.16 * w
            d.rectangle([wx, wy, wx + ws, wy + ws], fill=GLASS, outline=(250, 250, 250), width=edge)
        d.rectangle([x0 + 0.4 * w, y1 - 0.32 * h, x0 + 0.6 * w, y1 - 1], fill=(90, 55, 35))
    elif o.kind == "tree":
        d.rectangle([x0 + 0.4 * w, y0 + 0.5 * h, x0 + 0.6 * w, y1 - 1], fill=BROWN)
        d.ellipse([x0, y0, x1 - 1, y0 + 0.6 * h], fill=(40, 120, 50))
    elif o.kind == "car":
        d.polygon(
            [(x0 + 0.22 * w, y0 + 0.45 * h), (x0 + 0.32 * w, y0), (x0 + 0.68 * w, y0), (x0 + 0.8 * w, y0 + 0.45 * h)],
            fill=c,
        )
        d.rectangle([x0 + 0.36 * w, y0 + 0.1 * h, x0 + 0.64 * w, y0 + 0.4 * h], fill=GLASS)
        d.rectangle([x0, y0 + 0.4 * h, x1 - 1, y0 + 0.8 * h], fill=c, outline=dark, width=edge)
        for fx in (0.22, 0.78):
            r = 0.2 * h
            d.ellipse([x0 + fx * w - r, y1 - 2 * r, x0 + fx * w + r, y1 - 1], fill=(30, 30, 30))
    elif o.kind in ("circle", "square", "triangle"):
        # A dark outline of the same look whatever the fill colour: the shape reads from its outline.
        line = max(2, round(min(w, h) * 0.07))
        if o.kind == "triangle":
            d.polygon([(x0, y1 - 1), (x0 + w / 2, y0), (x1 - 1, y1 - 1)], fill=c, outline=OUTLINE, width=line)
        else:
            draw = d.ellipse if o.kind == "circle" else d.rectangle
            draw([x0, y0, x1 - 1, y1 - 1], fill=c, outline=OUTLINE, width=line)
    elif o.kind == "sun":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=(255, 210, 40), outline=(245, 170, 30), width=max(1, w // 25))
    else:  # cloud: two overlapping puffs, like the example picture's
        d.ellipse([x0, y0 + 0.3 * h, x0 + 0.6 * w, y1 - 1], fill=(238, 240, 248))
        d.ellipse([x0 + 0.28 * w, y0, x1 - 1, y1 - 1 - 0.1 * h], fill=(246, 246, 252))


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image: vertical sky gradient, grass, optional path, then the objects."""
    img = Image.new("RGB", (scene.width, scene.height))
    d = ImageDraw.Draw(img)
    low = (205, 222, 246)
    for y in range(scene.horizon):
        f = y / max(1, scene.horizon - 1)
        d.line([(0, y), (scene.width, y)], fill=tuple(round(a + (b - a) * f) for a, b in zip(scene.sky, low)))
    d.rectangle([0, scene.horizon, scene.width, scene.height], fill=scene.grass)
    if scene.path is not None:
        d.rectangle([0, scene.path, scene.width, scene.path + max(2, scene.height // 32)], fill=(190, 180, 140))
    for o in scene.objects:
        _draw(d, o)
    return img
