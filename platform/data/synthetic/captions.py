"""Captions for synthetic images: explicit class mentions plus attribute-linked context words.

For each caption and each class present in the image, the class is named explicitly ("two red
stars", "under a striped sky") with probability ``MENTION_PROBABILITY[caption_group]``; otherwise,
half of the time, it is only *implied* through words tied to its attributes ("something fiery and
spiky", "on the lawn", "under the speckled sky"). Caption-supervised methods (Cap2Seg) thus get
both direct and indirect evidence, with class-dependent difficulty. Absent classes are never named.

The caption variant (``variant="cap2seg"``) also says where things are: after a thing's phrase,
with probability :data:`POSITION_PROBABILITY`, a position phrase from its mean vertical position
("at the top", "in the middle", "near the bottom"), and with probability
:data:`RELATION_PROBABILITY` a relation to the stuff ("above the lawn", "up against the sky").
The default variant draws exactly the random numbers it always drew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from zeroseg.platform.data.synthetic.render import vocabulary
from zeroseg.platform.data.synthetic.vocabulary import MENTION_PROBABILITY, PALETTES

#: Probability that a present class which is not named gets an attribute-linked hint instead.
HINT_PROBABILITY = 0.5
CAPTIONS_PER_IMAGE = (3, 5)  # inclusive range

SHAPE_WORDS = {
    "circle": ("round", "disc-like"),
    "square": ("boxy", "four-cornered"),
    "triangle": ("pointy", "three-cornered"),
    "star": ("spiky", "sparkly"),
}
COLOUR_WORDS = {
    "red": ("fiery", "crimson"),
    "green": ("leafy", "emerald"),
    "blue": ("navy", "ocean-coloured"),
    "yellow": ("sunny", "golden"),
    "purple": ("violet", "plum-coloured"),
}
PALETTE_PHRASES = {
    "sky": ("up in the sky", "under the clouds"),
    "grass": ("on the lawn", "in a meadow"),
    "sand": ("on the beach", "in the dunes"),
}
PALETTE_NOUNS = {"sky": "sky", "grass": "lawn", "sand": "beach"}
TEXTURE_WORDS = {"smooth": "plain", "striped": "stripy", "dotted": "speckled", "wavy": "rippled"}
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
TEMPLATES = ("{s}{p}.", "A picture of {s}{p}.", "An image with {s}{p}.", "Here we see {s}{p}.")
POSITION_PROBABILITY = 0.6
RELATION_PROBABILITY = 0.3
POSITION_WORDS = (("at the top", "high up"), ("in the middle", "halfway down"),
                  ("near the bottom", "low down"))


def _where(rng: np.random.Generator, row: float, ground: str | None) -> str:
    """A position (and maybe relation) phrase for a thing centred at ``row`` (0 = top, 1 =
    bottom) in an image whose first ground palette is ``ground``."""
    parts = []
    if rng.random() < POSITION_PROBABILITY:
        parts.append(_pick(rng, POSITION_WORDS[min(2, int(row * 3))]))
    if rng.random() < RELATION_PROBABILITY:
        if row < 0.5 and ground is not None:
            parts.append(f"above the {PALETTE_NOUNS[ground]}")
        else:
            parts.append("under the sky" if row >= 0.5 else "up against the sky")
    return (" " + " ".join(parts)) if parts else ""


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(parts: list[str], last: str = "and") -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + f" {last} " + parts[-1]


def _thing_phrase(rng: np.random.Generator, class_index: int, count: int, crowd: bool,
                  explicit: bool) -> str:
    cls = vocabulary().classes[class_index]
    colour, shape = cls.attributes["colour"], cls.attributes["shape"]
    if explicit:
        if crowd:
            return f"a crowd of small {cls.name}s"
        if count == 1:
            return f"a {cls.name}"
        return f"{NUMBER_WORDS.get(count, 'several')} {cls.name}s"
    shape_word, colour_word = _pick(rng, SHAPE_WORDS[shape]), _pick(rng, COLOUR_WORDS[colour])
    if crowd:
        return f"a cluster of little {colour_word} {shape_word} things"
    form = int(rng.integers(3))
    if form == 0:
        return f"something {colour_word} and {shape_word}"
    if form == 1:
        return f"a {shape_word} {colour_word} shape"
    return f"a {shape_word} shape"


def _stuff_phrase(rng: np.random.Generator, class_index: int, explicit: bool) -> str:
    cls = vocabulary().classes[class_index]
    texture, palette = cls.attributes["texture"], cls.attributes["palette"]
    preposition = "under" if PALETTES[palette][1] == "top" else "on"
    if explicit:
        article = "a " if palette == "sky" else ""
        return f"{preposition} {article}{cls.name}"
    if rng.random() < 0.5:
        return _pick(rng, PALETTE_PHRASES[palette])
    return f"{preposition} the {TEXTURE_WORDS[texture]} {PALETTE_NOUNS[palette]}"


def make_captions(rng: np.random.Generator, things: Mapping[int, int], crowds: Sequence[int],
                  stuff: Sequence[int], *, variant: str = "default",
                  rows: Mapping[int, float] | None = None) -> list[str]:
    """Captions for one image.

    ``things``: thing class index -> number of (non-crowd) instances; ``crowds``: thing classes
    present as crowds; ``stuff``: stuff class indices top to bottom; ``rows`` (variant
    ``cap2seg``): thing class index -> its mean vertical position in [0, 1] (0 = top).
    """
    classes = vocabulary().classes
    n = int(rng.integers(CAPTIONS_PER_IMAGE[0], CAPTIONS_PER_IMAGE[1] + 1))
    captions = []
    for _ in range(n):
        subjects: list[str] = []
        entries = [(c, k, False) for c, k in things.items()] + [(c, 0, True) for c in crowds]
        for class_index, count, crowd in entries:
            group = classes[class_index].extra["caption_group"]
            phrase = None
            if rng.random() < MENTION_PROBABILITY[group]:
                phrase = _thing_phrase(rng, class_index, count, crowd, explicit=True)
            elif rng.random() < HINT_PROBABILITY:
                phrase = _thing_phrase(rng, class_index, count, crowd, explicit=False)
            if phrase is not None:
                if variant == "cap2seg" and rows is not None and class_index in rows:
                    grounds = [classes[s].attributes["palette"] for s in stuff
                               if classes[s].attributes["palette"] != "sky"]
                    phrase += _where(rng, rows[class_index], grounds[0] if grounds else None)
                subjects.append(phrase)
        settings: list[str] = []
        for class_index in stuff:
            group = classes[class_index].extra["caption_group"]
            if rng.random() < MENTION_PROBABILITY[group]:
                settings.append(_stuff_phrase(rng, class_index, explicit=True))
            elif rng.random() < HINT_PROBABILITY:
                settings.append(_stuff_phrase(rng, class_index, explicit=False))
        order = rng.permutation(len(subjects))
        subject = _join([subjects[i] for i in order]) or _pick(
            rng, ("a few shapes", "some objects", "a simple scene"))
        setting = (" " + " and ".join(settings)) if settings else ""
        text = _pick(rng, TEMPLATES).format(s=subject, p=setting)
        captions.append(text[0].upper() + text[1:])
    return captions
