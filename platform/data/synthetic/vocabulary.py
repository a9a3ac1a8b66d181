"""The synthetic benchmark's classes: compositions of attributes, fixed (not seeded).

Thing classes are ``colour x shape`` ("red star"); stuff classes are ``texture x palette``
("striped sky"), and each palette has a position prior (sky on top, grass and sand below).
Every unseen class (test split) and every held-out seen class (validation split) is a
composition whose attributes all occur in the classes that remain for training, so a model that
learns attributes from seen classes can transfer to unseen ones (DESIGN.md section 4).

The seed of ``zeroseg data synth`` changes images, never this vocabulary, so the registry can
describe the synthetic split without generating anything.
"""

from __future__ import annotations

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split

# Saturated colours for things, muted palettes for stuff: told apart by colour alone.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "star")

# palette -> (base RGB, position prior: "top" | "bottom")
PALETTES: dict[str, tuple[tuple[int, int, int], str]] = {
    "sky": ((150, 185, 215), "top"),
    "grass": ((110, 130, 80), "bottom"),
    "sand": ((200, 180, 140), "bottom"),
}
TEXTURES = ("smooth", "striped", "dotted", "wavy")

# Zero-shot classes of the test split: one per shape / texture, colours and palettes spread.
UNSEEN_THINGS = {("red", "star"), ("green", "triangle"), ("blue", "circle"), ("yellow", "square")}
UNSEEN_STUFF = {("striped", "sky"), ("dotted", "grass"), ("wavy", "sand")}
# Held-out seen classes that play "unseen" on the validation split (hyperparameter selection).
VAL_UNSEEN_THINGS = {("purple", "star"), ("green", "circle"), ("red", "square")}
VAL_UNSEEN_STUFF = {("smooth", "grass"), ("dotted", "sky")}

# Caption difficulty (Cap2Seg's easy / medium / hard): how often a caption names the class.
CAPTION_GROUPS = ("easy", "medium", "hard")
MENTION_PROBABILITY = {"easy": 0.9, "medium": 0.5, "hard": 0.15}

SPLIT_NAME = "synthetic/default"

# The caption variant (``zeroseg data synth --variant cap2seg``; the default output is unchanged):
# Cap2Seg's split name and protocol (unseen pixels of training images are ignored, not the
# images dropped: captions of those images are the weak supervision), vertical placement priors
# per shape (the band of the image a thing's centre is drawn from, as fractions of the side),
# and thing colour -> stuff palette affinities (things of a colour are drawn more often over
# ground of that palette: attribute-level thing-stuff co-occurrence).
VARIANTS = ("default", "cap2seg")
CAP2SEG_SPLIT_NAME = "synthetic/cap2seg"
SHAPE_ROWS = {"star": (0.08, 0.40), "circle": (0.25, 0.65), "triangle": (0.55, 0.92),
              "square": (0.45, 0.92)}
COLOUR_PALETTE = {"red": "sand", "yellow": "sand", "green": "grass", "blue": "grass",
                  "purple": "grass"}  # every image has a sky band: no affinity with "sky"
AFFINITY_WEIGHT = 4.0  # relative weight of a thing whose colour matches a palette in the image


def _caption_group(index: int) -> str:
    return CAPTION_GROUPS[index % len(CAPTION_GROUPS)]


def synthetic_split() -> Split:
    """The synthetic benchmark's 32 classes (20 things, 12 stuff; 7 unseen, 5 held out)."""
    classes: list[ClassInfo] = []

    def add(name: str, isthing: bool, attrs: dict[str, str], unseen: bool, val_unseen: bool,
            colour: tuple[int, int, int]) -> None:
        index = len(classes)
        classes.append(ClassInfo(
            index=index, id=index + 1, name=name, isthing=isthing, unseen=unseen,
            val_unseen=val_unseen, png_label=index, attributes=attrs,
            extra={"color": list(colour), "caption_group": _caption_group(index)},
        ))

    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            key = (colour, shape)
            add(f"{colour} {shape}", True, {"colour": colour, "shape": shape},
                key in UNSEEN_THINGS, key in VAL_UNSEEN_THINGS, rgb)
    for palette, (rgb, position) in PALETTES.items():
        for texture in TEXTURES:
            key = (texture, palette)
            add(f"{texture} {palette}", False,
                {"texture": texture, "palette": palette, "position": position},
                key in UNSEEN_STUFF, key in VAL_UNSEEN_STUFF, rgb)

    return Split(
        name=SPLIT_NAME, dataset="synthetic", tasks=("semantic", "instance", "panoptic"),
        protocol=PROTOCOL_DROP_IMAGES, classes=tuple(classes),
        source="zeroseg synthetic benchmark (DESIGN.md section 4)",
        description="colour x shape things, texture x palette stuff; unseen = unseen compositions",
        groups={g: tuple(c.id for c in classes if c.unseen and c.extra["caption_group"] == g)
                for g in CAPTION_GROUPS},
    )
