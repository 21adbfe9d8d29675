"""Synthetic scenes of the toy world: 1-4 coloured shapes on a plain background.

A scene is drawn from its own seeded generator (`scene_for(seed, index)`), so the same
(seed, index) gives the same scene whatever else is drawn, and everything about it comes
from one description in unit coordinates, rendered at any size:

* the image (antialiased: drawn at 4x and box-downsampled);
* a caption naming every object ("a red circle left of a blue square on a white
  background"; three or four objects are listed left to right);
* a paragraph (sizes, positions, pairwise relations; over 77 CLIP tokens for 3-4 objects);
* one binary mask per object (objects never overlap, so nothing is occluded);
* a stroke painting: each object a flat blob of its colour with jittered outline, the
  edges blurred, as the stroke inputs of GradOP+ look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {  # object colours: far apart in RGB and in luminance order
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 80, 215),
    "yellow": (235, 210, 45), "purple": (135, 60, 175), "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (235, 235, 230), "gray": (125, 125, 125), "black": (20, 20, 20)}
SIZES = {"small": 0.11, "medium": 0.15, "large": 0.2}  # radius as a fraction of the image side
MAX_OBJECTS = 4
SUPERSAMPLE = 4
MARGIN = 0.02  # minimum gap between two objects' bounding circles, and to the image border


@dataclass(frozen=True)
class ToyObject:
    shape: str
    color: str
    size: str
    x: float  # centre, unit coordinates (0 = left / top, 1 = right / bottom)
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ToyObject, ...]

    def caption(self) -> str:
        return caption(self)

    def paragraph(self) -> str:
        return paragraph(self)


# --- sampling ---------------------------------------------------------------------------

def scene_for(seed: int, index: int, n_objects: int | None = None) -> Scene:
    """The scene number `index` of the world `seed` (from default_rng([seed, index]))."""
    return sample_scene(np.random.default_rng([seed, index]), n_objects)


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, tries: int = 60) -> Scene:
    """1-4 objects (uniform), each shape, colour and size uniform, placed without overlap:
    an object that finds no free place in `tries` positions is shrunk one size and tried
    again. The (shape, colour) pairs of a scene are distinct, so a caption names each
    object once."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"a toy scene has 1-{MAX_OBJECTS} objects, not {n}")
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    pairs = [(shape, color) for shape in SHAPES for color in COLORS]
    chosen = [pairs[int(k)] for k in rng.choice(len(pairs), size=n, replace=False)]
    for _ in range(20):  # a crowded draw starts again (from the same generator: deterministic)
        objects = _place(rng, chosen, tries)
        if objects is not None:
            return Scene(background, tuple(objects))
    raise RuntimeError(f"could not place {n} objects without overlap")


def _place(rng: np.random.Generator, kinds: list[tuple[str, str]], tries: int) -> list[ToyObject] | None:
    sizes = list(SIZES)
    objects: list[ToyObject] = []
    for shape, color in kinds:
        size_index = int(rng.integers(len(sizes)))
        placed = None
        while placed is None:
            radius = SIZES[sizes[size_index]]
            for _ in range(tries):
                x, y = rng.uniform(radius + MARGIN, 1 - radius - MARGIN, size=2)
                candidate = ToyObject(shape, color, sizes[size_index], float(x), float(y))
                if not any(_overlap(candidate, other) for other in objects):
                    placed = candidate
                    break
            else:
                if size_index == 0:
                    return None
                size_index -= 1
        objects.append(placed)
    return objects


def _overlap(a: ToyObject, b: ToyObject) -> bool:
    return np.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + MARGIN


# --- geometry and rendering ----------------------------------------------------------------

def shape_outline(obj: ToyObject, size: int, jitter: np.ndarray | None = None) -> list[tuple[float, float]] | None:
    """The polygon of a shape in pixels (None for a circle, drawn as an ellipse). `jitter`
    (one (dx, dy) per vertex, in radii) moves the vertices, for stroke paintings."""
    r, cx, cy = obj.radius * size, obj.x * size, obj.y * size
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        h = 0.82 * r  # about the circle's area
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(h * a, h * b) for a, b in unit]
    elif obj.shape == "triangle":
        points = [(r * np.cos(t), r * np.sin(t)) for t in np.deg2rad([-90, 30, 150])]
        points = [(px, py + 0.15 * r) for px, py in points]  # centre the visual mass
    elif obj.shape == "diamond":
        points = [(0, -r), (r, 0), (0, r), (-r, 0)]
    elif obj.shape == "cross":
        a, b = 0.3 * r, 0.95 * r
        points = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                  (-a, -a)]
    else:
        raise ValueError(f"unknown toy shape {obj.shape!r} (shapes: {', '.join(SHAPES)})")
    if jitter is not None:
        points = [(px + r * dx, py + r * dy) for (px, py), (dx, dy) in zip(points, jitter)]
    return [(cx + px, cy + py) for px, py in points]


def _draw(draw: ImageDraw.ImageDraw, obj: ToyObject, size: int, fill, jitter=None) -> None:
    outline = shape_outline(obj, size, jitter)
    if outline is None:
        r, cx, cy = obj.radius * size, obj.x * size, obj.y * size
        if jitter is not None:  # a slightly squashed blob
            rx, ry = r * (1 + jitter[0][0]), r * (1 + jitter[0][1])
        else:
            rx = ry = r
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    else:
        draw.polygon(outline, fill=fill)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image, antialiased."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, big, COLORS[obj.color])
    return image.resize((size, size), Image.Resampling.BOX)


def instance_masks(scene: Scene, size: int = 64) -> np.ndarray:
    """bool [n_objects, size, size]: the pixels each object covers (at least half of)."""
    big = size * SUPERSAMPLE
    masks = []
    for obj in scene.objects:
        canvas = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(canvas), obj, big, 255)
        masks.append(np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) >= 128)
    return np.stack(masks) if masks else np.zeros((0, size, size), bool)


def stroke_painting(scene: Scene, size: int = 64, seed: int = 0, blur: float = 1.5) -> Image.Image:
    """What a user would paint for the scene: flat colour blobs with wobbly outlines (each
    vertex moved up to 15% of the radius), slightly off colour, the edges blurred."""
    rng = np.random.default_rng([seed, 7919])
    big = size * SUPERSAMPLE
    background = np.clip(np.array(BACKGROUNDS[scene.background]) + rng.integers(-12, 13, 3), 0, 255)
    image = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = rng.uniform(-0.15, 0.15, size=(12, 2))
        color = np.clip(np.array(COLORS[obj.color]) + rng.integers(-20, 21, 3), 0, 255)
        _draw(draw, obj, big, tuple(int(v) for v in color), jitter)
    small = image.resize((size, size), Image.Resampling.BOX)
    return small.filter(ImageFilter.GaussianBlur(blur * size / 64))


# --- text ---------------------------------------------------------------------------------

def _relation(a: ToyObject, b: ToyObject) -> str:
    """Where a is relative to b, by the larger offset."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    objects = sorted(scene.objects, key=lambda o: o.x)
    names = [f"{_article(o.name)} {o.name}" for o in objects]
    if len(objects) == 2:
        body = f"{names[0]} {_relation(objects[0], objects[1])} {names[1]}"
    elif len(objects) > 2:
        body = ", ".join(names[:-1]) + f" and {names[-1]}"
    else:
        body = names[0]
    return f"{body} on a {scene.background} background"


def _region(obj: ToyObject) -> str:
    column = "left" if obj.x < 1 / 3 else "right" if obj.x > 2 / 3 else ""
    row = "top" if obj.y < 1 / 3 else "bottom" if obj.y > 2 / 3 else ""
    if row and column:
        return f"the {row} {column} corner"
    if row or column:
        return f"the {row or column} part"
    return "the middle"


_COUNTS = {1: "one shape", 2: "two shapes", 3: "three shapes", 4: "four shapes"}


def paragraph(scene: Scene) -> str:
    """A long description: every object's size, colour, shape and place, then how each
    pair of neighbours (left to right) relates. Three or four objects exceed 77 CLIP tokens."""
    objects = sorted(scene.objects, key=lambda o: o.x)
    sentences = [f"This picture shows {_COUNTS[len(objects)]} on a plain {scene.background} background."]
    for k, obj in enumerate(objects):
        lead = "The first" if k == 0 else "Next, there"
        sentences.append(f"{lead} is {_article(obj.size)} {obj.size} {obj.name} in {_region(obj)} of the picture, "
                         f"painted in a flat {obj.color} colour with sharp edges.")
    for a, b in zip(objects, objects[1:]):
        sentences.append(f"The {a.name} is {_relation(a, b)} the {b.name}.")
    sentences.append("Nothing else is in the picture, and the shapes do not touch each other.")
    return " ".join(sentences)
