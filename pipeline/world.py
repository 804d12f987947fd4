"""The procedural world the embedded `tiny` model is trained on: flat backgrounds, coloured shapes, straight motion.

A scene is a background colour and one or two objects; each object has a colour, a shape, a size, a
direction and its centre at frame 0 (pixels). Objects move `SPEED` pixels per frame and wrap around the
frame's edges (the frame is a torus), so a minute of motion stays in view and any frame, with the prompt,
fixes everything after it. `caption` writes a scene as a prompt from the closed vocabulary below;
`parse_prompt` reads one back, ignoring every word it does not know.

Frames are uint8 (height, width, 3) RGB at `SIZE` x `SIZE`; `thumbnails` gives the tiny VAE's latent of a
clip directly (4x4-pixel means in [-1, 1], one per latent frame), so training never runs the VAE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

SIZE = 128           # pixels, square
FPS = 16
SPEED = 1.0          # pixels per frame
THUMB = 4            # pixels per latent cell (the tiny VAE's spatial factor)
CHUNK = 4            # frames per latent frame (the tiny VAE's temporal factor)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 50, 190), "white": (240, 240, 240),
}
SHAPES = ("ball", "square", "triangle")
SIZES: dict[str, float] = {"small": 9.0, "big": 16.0}
DEFAULT_RADIUS = 12.0  # pixels, an object with no size word
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                              "down": (0.0, 1.0)}
SYNONYMS = {"circle": "ball", "box": "square", "large": "big", "tiny": "small", "violet": "purple"}
VOCABULARY = (*COLOURS, *SHAPES, *SIZES, *DIRECTIONS, *SYNONYMS, "moving", "background", "and", "on")
# (colour, shape, background) never drawn for training: held-out prompts for tests and bench.tiny_quality.
HELD_OUT = frozenset({("red", "ball", "blue"), ("yellow", "square", "purple"), ("white", "triangle", "green"),
                      ("blue", "ball", "orange"), ("orange", "triangle", "red"), ("purple", "square", "yellow")})
FILLERS = ("a", "the", "slowly", "scene", "bright", "simple", "in", "of", "video", "cinematic", "fox", "snow",
           "lighthouse", "beautiful", "4k", "shot", "with", "over", "cliff", "dusk")


@dataclass(frozen=True)
class Thing:
    """One object: colour, shape, radius (pixels), direction and centre (x, y) at frame 0 (pixels)."""

    colour: str
    shape: str
    direction: str
    radius: float = DEFAULT_RADIUS
    start: tuple[float, float] = (SIZE / 2, SIZE / 2)
    end: tuple[float, float] | None = None  # straight path to here at the last frame, instead of SPEED

    def centre(self, frame: int, num_frames: int) -> tuple[float, float]:
        """Centre at `frame` (pixels; may lie outside the frame, which wraps)."""
        if self.end is not None:
            share = frame / max(num_frames - 1, 1)
            return tuple(a + (b - a) * share for a, b in zip(self.start, self.end, strict=True))
        dx, dy = DIRECTIONS[self.direction]
        return self.start[0] + dx * SPEED * frame, self.start[1] + dy * SPEED * frame


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...] = field(default_factory=tuple)


def _coverage(thing: Thing, cx: float, cy: float, grid: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape centred at (cx, cy) on a torus of SIZE pixels, sampled on
    `grid` (pixel centres, in SIZE-pixel units) whose pixels are `pixel` wide."""
    dx = (grid[1] - cx + SIZE / 2) % SIZE - SIZE / 2
    dy = (grid[0] - cy + SIZE / 2) % SIZE - SIZE / 2
    r = thing.radius
    if thing.shape == "ball":
        distance = np.hypot(dx, dy) - r
    elif thing.shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    else:  # an upright triangle: the largest of three half-plane distances
        slope = np.array([0.866, 0.5])
        distance = np.maximum.reduce([dy - r * 0.75, slope[0] * dx - slope[1] * dy - r * 0.65,
                                      -slope[0] * dx - slope[1] * dy - r * 0.65])
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _grid(resolution: int) -> np.ndarray:
    return (np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5) * (SIZE / resolution)


_GRIDS = {resolution: _grid(resolution) for resolution in (SIZE, 2 * SIZE // THUMB)}


def render_frame(scene: Scene, frame: int, num_frames: int, resolution: int = SIZE) -> np.ndarray:
    """One frame of a clip of `num_frames`: float32 (resolution, resolution, 3) in [0, 1]."""
    grid = _GRIDS[resolution]
    image = np.empty((resolution, resolution, 3), np.float32)
    image[:] = np.array(COLOURS[scene.background], np.float32) / 255.0
    image *= 1.0 - 0.18 * (grid[0] / SIZE)[..., None]  # a little darker towards the bottom
    for thing in scene.things:
        alpha = _coverage(thing, *thing.centre(frame, num_frames), grid, SIZE / resolution)[..., None]
        image = image * (1.0 - alpha) + alpha * (np.array(COLOURS[thing.colour], np.float32) / 255.0)
    return image


def render_clip(scene: Scene, num_frames: int) -> np.ndarray:
    """A clip: uint8 (num_frames, SIZE, SIZE, 3)."""
    frames = np.stack([render_frame(scene, t, num_frames) for t in range(num_frames)])
    return (frames * 255.0 + 0.5).astype(np.uint8)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The tiny VAE's latent of one frame (SIZE or half the size, float in [0, 1] or uint8): float32
    (3, SIZE/THUMB, SIZE/THUMB), the means of the pixels of each cell, scaled to [-1, 1]."""
    pixels = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    cells, block = SIZE // THUMB, image.shape[0] * THUMB // SIZE
    cells = pixels.reshape(cells, block, cells, block, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(cells.transpose(2, 0, 1) * 2.0 - 1.0)


def as_cells(image: np.ndarray) -> np.ndarray:
    """A uint8 frame as the tiny VAE holds it exactly: its 4x4-pixel means, drawn as 4x4 blocks."""
    cells = image.reshape(SIZE // THUMB, THUMB, SIZE // THUMB, THUMB, 3).mean(axis=(1, 3))
    return (np.repeat(np.repeat(cells, THUMB, axis=0), THUMB, axis=1) + 0.5).astype(np.uint8)


def latent_frames(num_frames: int) -> list[int]:
    """The video frames the tiny VAE keeps one latent of: 0, then the last of each 4-frame chunk."""
    return list(range(0, num_frames, CHUNK))


def thumbnails(scene: Scene, num_frames: int) -> np.ndarray:
    """The clip's latent without rendering every frame (each cell sampled 2x2): float32 (3, latent frames, 32, 32)."""
    resolution = 2 * SIZE // THUMB
    frames = [thumbnail(render_frame(scene, t, num_frames, resolution)) for t in latent_frames(num_frames)]
    return np.stack(frames, axis=1)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(thing: Thing) -> str:
    size = next((name for name, r in SIZES.items() if r == thing.radius), "")
    words = " ".join(w for w in (size, thing.colour, thing.shape) if w)
    return f"{_article(words)} {words} moving {thing.direction}"


def caption(scene: Scene) -> str:
    """The scene in the embedded model's grammar: `a <colour> <shape> moving <direction> on a <colour> background`."""
    objects = " and ".join(describe(thing) for thing in scene.things)
    return f"{objects} on {_article(scene.background)} {scene.background} background"


def noisy_caption(scene: Scene, rng: np.random.Generator) -> str:
    """`caption` with synonyms, unknown filler words and shuffled clauses, as training prompts use."""
    text = caption(scene)
    if rng.random() < 0.3:
        objects, _, background = text.rpartition(" on ")
        text = f"on {background}, {objects}"
    words = text.split()
    reverse = {v: k for k, v in SYNONYMS.items()}
    words = [reverse[w] if w in reverse and rng.random() < 0.2 else w for w in words]
    for _ in range(rng.poisson(0.7)):
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(FILLERS)))
    return " ".join(words)


_WORD = re.compile(r"[a-z0-9]+")


def parse_prompt(prompt: str) -> dict:
    """What the embedded model understands of a prompt: {'background': colour or None, 'things': [
    {'colour', 'shape', 'size', 'direction'} (each None when not said)]}. Unknown words are ignored."""
    words = [SYNONYMS.get(w, w) for w in _WORD.findall(prompt.lower())]
    background = None
    if "background" in words:
        before = [w for w in words[: words.index("background")] if w in COLOURS]
        background = before[-1] if before else None
    things, current = [], {}
    for index, word in enumerate(words):
        if word == "background":
            continue
        if word in COLOURS and not (index + 1 < len(words) and words[index + 1] == "background"):
            current.setdefault("colour", word)
        elif word in SHAPES:
            current.setdefault("shape", word)
        elif word in SIZES:
            current.setdefault("size", word)
        elif word in DIRECTIONS:
            current.setdefault("direction", word)
        elif word == "and" and current:
            things.append(current)
            current = {}
    if current:
        things.append(current)
    keys = ("colour", "shape", "size", "direction")
    return {"background": background, "things": [{key: t.get(key) for key in keys} for t in things[:2]]}


def random_thing(rng: np.random.Generator, background: str, held_out: bool = False) -> Thing:
    """A random object on `background`: of a combination in HELD_OUT if `held_out`, else of one not in it."""
    while True:
        colour, shape = str(rng.choice([c for c in COLOURS if c != background])), str(rng.choice(SHAPES))
        if ((colour, shape, background) in HELD_OUT) == held_out:
            break
    size = str(rng.choice(["", *SIZES]))
    return Thing(colour=colour, shape=shape, direction=str(rng.choice(list(DIRECTIONS))),
                 radius=SIZES.get(size, DEFAULT_RADIUS), start=tuple(rng.uniform(0, SIZE, 2)))


def random_scene(rng: np.random.Generator, two_objects: float = 0.2, held_out: bool = False) -> Scene:
    """A seeded random scene: a background and one (or, with probability `two_objects`, two) moving objects;
    `held_out` draws a single object of a HELD_OUT combination instead (never seen in training)."""
    if held_out:
        colour, shape, background = sorted(HELD_OUT)[int(rng.integers(len(HELD_OUT)))]
        thing = random_thing(rng, background)
        return Scene(background, (Thing(colour, shape, thing.direction, thing.radius, thing.start),))
    background = str(rng.choice(list(COLOURS)))
    count = 2 if rng.random() < two_objects else 1
    return Scene(background, tuple(random_thing(rng, background) for _ in range(count)))


# Where a keyframe puts the objects, by how many there are (pixels): fixed, so that a few-step keyframe model
# can be sharp (the place of an object is then not a guess it must average over).
KEYFRAME_PLACES = {1: ((64.0, 64.0),), 2: ((40.0, 64.0), (88.0, 64.0))}


def keyframe_layout(scene: Scene) -> Scene:
    """The scene with its objects where a keyframe (the T2I) draws them: `KEYFRAME_PLACES`."""
    places = KEYFRAME_PLACES[len(scene.things)]
    return replace(scene, things=tuple(replace(t, start=p) for t, p in zip(scene.things, places, strict=True)))


def with_path(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with each object travelling in a straight line between two in-frame points (a first-last
    clip), its direction word the main direction of travel."""
    things = []
    for thing in scene.things:
        margin = thing.radius
        start, end = rng.uniform(margin, SIZE - margin, 2), rng.uniform(margin, SIZE - margin, 2)
        dx, dy = end - start
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        things.append(replace(thing, start=tuple(start), end=tuple(end), direction=direction))
    return replace(scene, things=tuple(things))


# --- measuring frames (tests and bench.tiny_quality) ------------------------------------------------------
def torus_delta(a: float, b: float) -> float:
    """b - a on a circle of SIZE pixels, in (-SIZE/2, SIZE/2]."""
    return (b - a + SIZE / 2) % SIZE - SIZE / 2


def object_mask(frame: np.ndarray, colour: str, background: str) -> np.ndarray:
    """Pixels of a uint8 frame nearer to `colour` than to the (shaded) `background`, within 90 levels of it."""
    pixels = frame.astype(np.float32)
    target = np.array(COLOURS[colour], np.float32)
    rows = 1.0 - 0.18 * (np.arange(frame.shape[0], dtype=np.float32) + 0.5) / frame.shape[0]
    ground = np.array(COLOURS[background], np.float32)[None, None, :] * rows[:, None, None]
    near = np.linalg.norm(pixels - target, axis=-1)
    return (near < np.linalg.norm(pixels - ground, axis=-1)) & (near < 90.0)


def locate(frame: np.ndarray, colour: str, background: str) -> tuple[float, float] | None:
    """Centre (x, y) in pixels of the `colour` object in a frame (circular means, as objects wrap), or None."""
    ys, xs = np.nonzero(object_mask(frame, colour, background))
    if len(xs) < 3:
        return None
    size = frame.shape[0]

    def circular(values: np.ndarray) -> float:
        angle = np.arctan2(np.sin(values * 2 * np.pi / size).mean(), np.cos(values * 2 * np.pi / size).mean())
        return float(angle * size / (2 * np.pi) % size)

    return circular(xs + 0.5), circular(ys + 0.5)


def background_colour(frame: np.ndarray) -> str:
    """The named colour nearest to the frame's median pixel (its background), allowing for the shading."""
    median = np.median(frame.reshape(-1, 3).astype(np.float32), axis=0) / 0.91
    return min(COLOURS, key=lambda name: np.linalg.norm(np.array(COLOURS[name]) - median))


def shape_of(mask: np.ndarray) -> str | None:
    """ball, square or triangle from an object's mask, by how much of its bounding box it fills."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 12:
        return None
    size = mask.shape[0]
    shift = (size // 2 - int(ys.mean()), size // 2 - int(xs.mean()))
    ys, xs = np.nonzero(np.roll(mask, shift, axis=(0, 1)))  # centred, so a wrapped object is whole
    fill = len(xs) / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    return min({"triangle": 0.5, "ball": 0.785, "square": 1.0}.items(), key=lambda kv: abs(kv[1] - fill))[0]


def scene_from_prompt(prompt: str) -> Scene:
    """The scene a prompt describes, its objects at `KEYFRAME_PLACES`; what it does not say is filled in
    (a white ball moving right on a blue background), and a third object and on are dropped."""
    said = parse_prompt(prompt)
    background = said["background"] or "blue"
    things = []
    for thing in said["things"] or [{}]:
        colour = thing.get("colour") or ("white" if background != "white" else "red")
        radius = SIZES.get(thing.get("size") or "", DEFAULT_RADIUS)
        things.append(Thing(colour, thing.get("shape") or "ball", thing.get("direction") or "right", radius))
    return keyframe_layout(Scene(background, tuple(things)))


def main() -> None:
    import argparse

    from PIL import Image

    parser = argparse.ArgumentParser(description="Draw the first frame of a prompt's scene, as a PNG.")
    parser.add_argument("prompt")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Image.fromarray(render_clip(scene_from_prompt(args.prompt), 1)[0]).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
