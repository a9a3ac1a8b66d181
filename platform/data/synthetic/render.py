"""Drawing one synthetic image: scene sampling, stuff textures, things, and the label maps.

A scene is a background of 2-3 horizontal bands (each a stuff class whose palette fits the band's
position: sky on top, grass or sand below) with wavy boundaries, then optionally a small unlabeled
"smudge" (VOID), an optional crowd (a cluster of small same-class shapes annotated as one crowd
segment) and 1-5 thing instances drawn in order, later ones occluding earlier ones. Masks are the
visible parts; some things carry a thin dark outline that is VOID. Everything is computed with
numpy on a per-image generator, so an image depends only on the generator's seed.

Shapes are drawn from signed distances (negative inside), which gives the filled mask
(``d <= 0``) and the outline ring (``0 < d <= w``) from the same array.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from zeroseg.platform.data.classes import IGNORE_LABEL, ClassInfo
from zeroseg.platform.data.synthetic.vocabulary import (
    AFFINITY_WEIGHT,
    COLOUR_PALETTE,
    COLOURS,
    PALETTES,
    SHAPE_ROWS,
    synthetic_split,
)

#: Reference resolution: sizes in pixels below are given at 128 px and scaled with the image.
BASE_SIZE = 128
#: Things narrower than this many visible pixels (at 128 px) are dropped from the scene.
MIN_VISIBLE_AREA = 20
#: A crowd needs this many times the minimum visible area, or it is dropped.
CROWD_AREA_FACTOR = 3
THING_SCALE = (0.10, 0.35)  # size of a thing as a fraction of the image side
INSTANCE_COUNT_WEIGHTS = (0.2, 0.25, 0.25, 0.15, 0.15)  # P(1..5 things)
THREE_BAND_PROBABILITY = 0.5
OUTLINE_PROBABILITY = 0.3
VOID_PATCH_PROBABILITY = 0.08
OUTLINE_RGB = (28, 28, 32)
PIXEL_NOISE = 5.0  # amplitude of the uniform per-pixel noise added to the whole image

BACKGROUND = -1  # owner value of background (stuff) pixels
VOID = -2  # owner value of unlabeled pixels


@dataclass(frozen=True)
class Vocabulary:
    """The class tables the renderer samples from (contiguous class indices)."""

    classes: tuple[ClassInfo, ...]
    things: tuple[int, ...]
    sky: tuple[int, ...]  # stuff classes whose palette belongs in the top band
    ground: tuple[int, ...]  # stuff classes for the lower bands
    unseen: frozenset[int]
    val_unseen: frozenset[int]

    def pool(self, indices: tuple[int, ...], excluded: frozenset[int]) -> tuple[int, ...]:
        return tuple(i for i in indices if i not in excluded)


@functools.lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    split = synthetic_split()
    classes = split.classes
    return Vocabulary(
        classes=classes,
        things=tuple(c.index for c in classes if c.isthing),
        sky=tuple(c.index for c in classes if not c.isthing
                  and PALETTES[c.attributes["palette"]][1] == "top"),
        ground=tuple(c.index for c in classes if not c.isthing
                     and PALETTES[c.attributes["palette"]][1] == "bottom"),
        unseen=frozenset(c.index for c in classes if c.unseen),
        val_unseen=frozenset(c.index for c in classes if c.val_unseen),
    )


# -- scene description -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    cx: float
    cy: float
    size: float  # nominal diameter / side in pixels
    angle: float  # radians


@dataclass(frozen=True)
class ThingSpec:
    class_index: int
    shapes: tuple[ShapeSpec, ...]  # one shape, or the members of a crowd
    iscrowd: bool
    outline: bool


@dataclass(frozen=True)
class Scene:
    bands: tuple[int, ...]  # stuff class index per band, top to bottom
    things: tuple[ThingSpec, ...]  # drawing order (crowd first if any)
    void_patch: bool


def sample_scene(rng: np.random.Generator, size: int, *, excluded: frozenset[int] = frozenset(),
                 forced: int | None = None, crowd: bool = False,
                 variant: str = "default") -> Scene:
    """Choose the classes and the geometry of one image.

    ``excluded``: classes that may not be drawn (``forced`` overrides); ``forced``: a class that
    must appear (placed in its band if stuff, as one instance at a random depth if a thing);
    ``crowd``: whether the image gets a crowd cluster. ``variant`` ``cap2seg``: things are drawn
    with the colour -> palette affinities and placed by their shape's vertical prior
    (vocabulary.py); ``default`` draws exactly what it always drew.
    """
    voc = vocabulary()
    sky_pool = voc.pool(voc.sky, excluded)
    ground_pool = voc.pool(voc.ground, excluded)
    thing_pool = voc.pool(voc.things, excluded)

    n_bands = 3 if rng.random() < THREE_BAND_PROBABILITY else 2
    sky = int(rng.choice(sky_pool))
    grounds = [int(g) for g in rng.choice(ground_pool, size=n_bands - 1, replace=False)]
    if forced is not None and not voc.classes[forced].isthing:
        if forced in voc.sky:
            sky = forced
        elif forced not in grounds:
            grounds[int(rng.integers(len(grounds)))] = forced
    bands = (sky, *grounds)

    n_things = 1 + int(rng.choice(len(INSTANCE_COUNT_WEIGHTS), p=INSTANCE_COUNT_WEIGHTS))
    if variant == "cap2seg":
        palettes = {voc.classes[b].attributes["palette"] for b in bands}
        weights = np.array([AFFINITY_WEIGHT if COLOUR_PALETTE[voc.classes[c].attributes[
            "colour"]] in palettes else 1.0 for c in thing_pool])
        thing_classes = [int(c) for c in rng.choice(thing_pool, size=n_things,
                                                    p=weights / weights.sum())]
    else:
        thing_classes = [int(c) for c in rng.choice(thing_pool, size=n_things)]
    if forced is not None and voc.classes[forced].isthing:
        thing_classes[int(rng.integers(n_things))] = forced

    things: list[ThingSpec] = []
    if crowd:
        things.append(_sample_crowd(rng, size, int(rng.choice(thing_pool))))
    for class_index in thing_classes:
        scale = rng.uniform(*THING_SCALE) * size
        shape_name = voc.classes[class_index].attributes["shape"]
        rows = SHAPE_ROWS[shape_name] if variant == "cap2seg" else (0.08, 0.92)
        shape = ShapeSpec(
            shape=shape_name,
            cx=float(rng.uniform(0.08, 0.92) * size), cy=float(rng.uniform(*rows) * size),
            size=float(scale), angle=float(_sample_angle(rng, voc.classes[class_index])),
        )
        things.append(ThingSpec(class_index, (shape,), iscrowd=False,
                                outline=bool(rng.random() < OUTLINE_PROBABILITY)))
    void_patch = bool(rng.random() < VOID_PATCH_PROBABILITY)
    return Scene(bands=bands, things=tuple(things), void_patch=void_patch)


def _sample_angle(rng: np.random.Generator, cls: ClassInfo) -> float:
    # Squares stay recognisably square (no diamonds); the others turn freely.
    if cls.attributes["shape"] == "square":
        return rng.uniform(-0.35, 0.35)
    return rng.uniform(0.0, 2 * math.pi)


def _sample_crowd(rng: np.random.Generator, size: int, class_index: int) -> ThingSpec:
    cls = vocabulary().classes[class_index]
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    members = []
    for _ in range(int(rng.integers(6, 13))):
        mx, my = rng.normal(0.0, 0.09 * size, size=2)
        members.append(ShapeSpec(
            shape=cls.attributes["shape"],
            cx=float(np.clip(cx + mx, 0, size - 1)), cy=float(np.clip(cy + my, 0, size - 1)),
            size=float(rng.uniform(0.05, 0.08) * size), angle=float(_sample_angle(rng, cls)),
        ))
    return ThingSpec(class_index, tuple(members), iscrowd=True, outline=False)


# -- geometry ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), float32, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def signed_distance(shape: str, px: np.ndarray, py: np.ndarray, size: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of a shape centred at the origin in
    its own (already rotated) frame; ``size`` is the nominal diameter or side."""
    if shape == "circle":
        return np.sqrt(px * px + py * py) - 0.5 * size
    if shape == "square":
        return np.maximum(np.abs(px), np.abs(py)) - 0.45 * size
    if shape == "triangle":
        inradius = 0.5 * 0.65 * size  # circumradius 0.65 * size, inradius half of it
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        # Outward edge normals of an upward-pointing equilateral triangle (image y grows down).
        d = np.maximum(py, np.maximum(c * px - s * py, -c * px - s * py))
        return d - inradius
    if shape == "star":
        outer, inner = 0.62 * size, 0.62 * size * 0.45
        sector = 2 * math.pi / 5
        theta = np.mod(np.arctan2(px, -py), sector)  # tip of the first arm points up
        theta = np.minimum(theta, sector - theta)  # fold onto the half-sector [0, pi/5]
        rho = np.sqrt(px * px + py * py)
        qx, qy = rho * np.cos(theta), rho * np.sin(theta)
        # Edge from the tip (outer, 0) to the valley at angle pi/5; distance to that line.
        vx, vy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        ex, ey = vx - outer, vy
        norm = math.hypot(ex, ey)
        nx, ny = ey / norm, -ex / norm  # outward (away from the centre)
        return (qx - outer) * nx + qy * ny
    raise ValueError(f"unknown shape {shape!r}")


@dataclass
class Part:
    """One drawn shape inside its window ``[y0:y1, x0:x1]`` of the image."""

    window: tuple[slice, slice]
    mask: np.ndarray  # bool, filled shape
    ring: np.ndarray | None  # bool, outline ring (VOID) or None
    colour: np.ndarray  # float32 (h, w, 3) shaded colour over the window


@dataclass
class Layer:
    spec: ThingSpec
    parts: list[Part] = field(default_factory=list)


def _draw_shape(rng: np.random.Generator, spec: ShapeSpec, rgb: tuple[int, int, int],
                image_size: int, outline_width: float) -> Part | None:
    yy, xx = _grid(image_size)
    reach = 0.68 * spec.size + outline_width + 1
    y0, y1 = max(0, int(spec.cy - reach)), min(image_size, int(math.ceil(spec.cy + reach)) + 1)
    x0, x1 = max(0, int(spec.cx - reach)), min(image_size, int(math.ceil(spec.cx + reach)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    window = (slice(y0, y1), slice(x0, x1))
    dx, dy = xx[window] - spec.cx, yy[window] - spec.cy
    c, s = math.cos(spec.angle), math.sin(spec.angle)
    px, py = c * dx + s * dy, -s * dx + c * dy
    d = signed_distance(spec.shape, px, py, spec.size)
    mask = d <= 0
    ring = ((d > 0) & (d <= outline_width)) if outline_width > 0 else None
    # Mild shading: a brightness factor and a linear light gradient across the shape.
    brightness = rng.uniform(0.88, 1.06)
    gx, gy = rng.normal(0.0, 0.12, size=2)
    shade = brightness + (gx * dx + gy * dy) / max(spec.size, 1.0)
    colour = shade[..., None] * np.asarray(rgb, dtype=np.float32)
    return Part(window, mask, ring, colour.astype(np.float32))


# -- stuff textures ----------------------------------------------------------------------------


def stuff_shade(texture: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A full-image (size, size) float32 brightness factor drawing ``texture``; multiplied by a
    palette's colour it gives the stuff region's pixels (two tones of one palette)."""
    yy, xx = _grid(size)
    f = size / BASE_SIZE
    if texture == "smooth":
        g = rng.uniform(-0.12, 0.12)
        phase = rng.uniform(0, 2 * math.pi)
        return (1.0 + g * (yy / size - 0.5)
                + 0.03 * np.sin(2 * math.pi * xx / (0.9 * size) + phase)).astype(np.float32)
    if texture == "striped":
        angle = rng.uniform(math.radians(25), math.radians(65)) * rng.choice((-1.0, 1.0))
        period = rng.uniform(7.0, 10.0) * f
        phase = rng.uniform(0, 1)
        s = (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase
        return np.where((s - np.floor(s)) < 0.5, np.float32(1.12), np.float32(0.8))
    if texture == "dotted":
        spacing = rng.uniform(7.0, 9.0) * f
        radius = rng.uniform(1.6, 2.2) * f
        ox, oy = rng.uniform(0, spacing, size=2)
        ddx = np.mod(xx + ox, spacing) - spacing / 2
        ddy = np.mod(yy + oy, spacing) - spacing / 2
        dot = ddx * ddx + ddy * ddy < radius * radius
        return np.where(dot, np.float32(0.68), np.float32(1.05))
    if texture == "wavy":
        wavelength = rng.uniform(20.0, 32.0) * f
        amplitude = rng.uniform(2.0, 3.5) * f
        period = rng.uniform(7.0, 10.0) * f
        phase = rng.uniform(0, 2 * math.pi)
        v = (yy + amplitude * np.sin(2 * math.pi * xx / wavelength + phase)) / period
        return np.where((v - np.floor(v)) < 0.4, np.float32(0.78), np.float32(1.08))
    raise ValueError(f"unknown texture {texture!r}")


def _band_map(rng: np.random.Generator, n_bands: int, size: int) -> np.ndarray:
    """Band index (0 = top) per pixel, with gently wavy boundaries."""
    yy, xx = _grid(size)
    if n_bands == 2:
        levels = [rng.uniform(0.35, 0.6)]
    else:
        levels = [rng.uniform(0.22, 0.4), rng.uniform(0.6, 0.8)]
    band = np.zeros((size, size), dtype=np.int8)
    for level in levels:
        amplitude = rng.uniform(0.01, 0.04) * size
        freq = rng.uniform(0.5, 2.0)
        phase = rng.uniform(0, 2 * math.pi)
        boundary = level * size + amplitude * np.sin(2 * math.pi * freq * xx[0] / size + phase)
        band += (yy >= boundary[None, :]).astype(np.int8)
    return band


# -- rendering ---------------------------------------------------------------------------------


@dataclass
class Segment:
    class_index: int
    isthing: bool
    iscrowd: bool
    mask: np.ndarray  # bool, visible pixels


@dataclass
class Rendered:
    image: np.ndarray  # uint8 (H, W, 3)
    segments: list[Segment]  # things in drawing order, then stuff bands top to bottom
    void: np.ndarray  # bool, unlabeled pixels


def render_scene(scene: Scene, rng: np.random.Generator, size: int) -> Rendered:
    voc = vocabulary()
    f = size / BASE_SIZE
    min_area = MIN_VISIBLE_AREA * f * f
    outline_width = max(1.0, round(f / 2))

    # Background bands.
    band = _band_map(rng, len(scene.bands), size)
    shade = np.empty((size, size), dtype=np.float32)
    palette = np.empty((len(scene.bands), 3), dtype=np.float32)
    for b, class_index in enumerate(scene.bands):
        attrs = voc.classes[class_index].attributes
        palette[b] = PALETTES[attrs["palette"]][0]
        np.copyto(shade, stuff_shade(attrs["texture"], rng, size), where=band == b)
    image = shade[..., None] * palette[band]

    owner_base = np.full((size, size), BACKGROUND, dtype=np.int16)
    if scene.void_patch:
        patch = _void_patch(rng, size)
        owner_base[patch] = VOID
        image[patch] = rng.uniform(60, 200, size=(int(patch.sum()), 1)).astype(np.float32)

    # Things (and the crowd) as layers of shaded parts.
    layers: list[Layer] = []
    for spec in scene.things:
        rgb = COLOURS[voc.classes[spec.class_index].attributes["colour"]]
        layer = Layer(spec)
        for shape in spec.shapes:
            part = _draw_shape(rng, shape, rgb, size, outline_width if spec.outline else 0.0)
            if part is not None:
                layer.parts.append(part)
        layers.append(layer)

    # Occlusion: later layers cover earlier ones; drop layers whose visible area is tiny, and
    # compose again so their pixels show what lies beneath.
    while True:
        owner = owner_base.copy()
        for k, layer in enumerate(layers):
            for part in layer.parts:
                view = owner[part.window]
                view[part.mask] = k
                if part.ring is not None:
                    view[part.ring] = VOID
        counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(layers))
        keep = [k for k, layer in enumerate(layers)
                if counts[k] >= min_area * (CROWD_AREA_FACTOR if layer.spec.iscrowd else 1)]
        if len(keep) == len(layers):
            break
        layers = [layers[k] for k in keep]

    for layer in layers:
        for part in layer.parts:
            view = image[part.window]
            view[part.mask] = part.colour[part.mask]
            if part.ring is not None:
                view[part.ring] = OUTLINE_RGB

    # Uniform noise in [-PIXEL_NOISE, PIXEL_NOISE] (cheaper than Gaussian, looks the same).
    noise = rng.random((size, size, 3), dtype=np.float32)
    image += (noise - 0.5) * (2 * PIXEL_NOISE) + 0.5
    pixels = np.clip(image, 0, 255).astype(np.uint8)

    segments = [Segment(layer.spec.class_index, True, layer.spec.iscrowd, owner == k)
                for k, layer in enumerate(layers)]
    background = owner == BACKGROUND
    for b, class_index in enumerate(scene.bands):
        mask = background & (band == b)
        if mask.any():
            segments.append(Segment(class_index, False, False, mask))
    return Rendered(image=pixels, segments=segments, void=owner == VOID)


def _void_patch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small irregular blob of unlabeled pixels."""
    yy, xx = _grid(size)
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    radius = rng.uniform(0.03, 0.06) * size
    phase = rng.uniform(0, 2 * math.pi)
    dx, dy = xx - cx, yy - cy
    wobble = 1.0 + 0.3 * np.sin(3 * np.arctan2(dy, dx) + phase)
    return dx * dx + dy * dy < (radius * wobble) ** 2


def label_maps(rendered: Rendered, segment_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic id map (int64, 0 = VOID) and semantic map (uint8 png labels, 255 = unlabeled)."""
    voc = vocabulary()
    shape = rendered.void.shape
    pan = np.zeros(shape, dtype=np.int64)
    sem = np.full(shape, IGNORE_LABEL, dtype=np.uint8)
    for seg, seg_id in zip(rendered.segments, segment_ids, strict=True):
        pan[seg.mask] = seg_id
        sem[seg.mask] = voc.classes[seg.class_index].png_label
    return pan, sem
