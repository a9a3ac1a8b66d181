"""Reader for PASCAL VOC 2012 semantic segmentation as the devkit ships it::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png        palette ("P") PNGs: the index is the label,
                                              0 = background, 1..20 classes, 255 = void boundary
    VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   one image id per line

Image ids are strings (``2007_000032``) and are visited in ascending (lexicographic) order, which
for VOC is chronological. Labels are decoded one image at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.platform.data.classes import IGNORE_LABEL, Split
from zeroseg.platform.errors import DataError
from zeroseg.platform.io import atomic_directory

log = logging.getLogger(__name__)

VOC_NUM_CLASSES = 21  # background + 20 object classes


@dataclass(frozen=True)
class VocLayout:
    """Where a VOC 2012 tree keeps its files (``root`` is the folder holding JPEGImages/)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def images(self) -> Path:
        return self.root / "JPEGImages"

    @property
    def labels(self) -> Path:
        return self.root / "SegmentationClass"

    def image_set(self, name: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{name}.txt"

    def image_path(self, image_id: str) -> Path:
        return self.images / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        return self.labels / f"{image_id}.png"


def read_image_set(path: str | Path) -> list[str]:
    """The ids listed in an ImageSets file, sorted ascending (DataError if missing or repeated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: VOC image set not found")
    ids: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        if len(item.split()) != 1:
            raise DataError(f"{path}:{lineno}: expected one image id per line, got {line!r}")
        ids.append(item)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: an image id is listed twice")
    return sorted(ids)


def read_voc_label(path: str | Path, num_classes: int = VOC_NUM_CLASSES) -> np.ndarray:
    """A VOC label PNG as HxW uint8: palette indices (mode P; mode L accepted), 255 = void.

    An RGB PNG is refused: its colours are not labels (a palette PNG was converted by mistake).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: VOC label PNG not found")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: expected a palette (P-mode) label PNG, got {im.mode}")
            label = np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_LABEL)])
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()} are outside 0..{num_classes - 1} "
                        f"and {IGNORE_LABEL}")
    return label


@dataclass(frozen=True)
class VocRecord:
    image_id: str
    image_path: Path
    label_path: Path
    label: np.ndarray  # H x W uint8 VOC labels, or contiguous indices when a split maps them


class VocSegmentation:
    """One image set of VOC 2012 segmentation, iterated in ascending image id."""

    def __init__(self, root: str | Path, image_set: str = "train", *,
                 num_classes: int = VOC_NUM_CLASSES, split: Split | None = None):
        self.layout = VocLayout(Path(root))
        self.image_set = image_set
        self.num_classes = num_classes
        self._lut = split.png_lut().astype(np.uint8) if split is not None else None
        self.image_ids = read_image_set(self.layout.image_set(image_set))
        for folder in (self.layout.images, self.layout.labels):
            if not folder.is_dir():
                raise DataError(f"{folder}: VOC folder not found")

    def __len__(self) -> int:
        return len(self.image_ids)

    def read(self, image_id: str) -> np.ndarray:
        label = read_voc_label(self.layout.label_path(image_id), self.num_classes)
        return self._lut[label] if self._lut is not None else label

    def records(self) -> Iterator[VocRecord]:
        for image_id in self.image_ids:
            image = self.layout.image_path(image_id)
            if not image.is_file():
                raise DataError(f"{image}: VOC image listed in {self.image_set}.txt not found")
            yield VocRecord(image_id, image, self.layout.label_path(image_id), self.read(image_id))

    def __iter__(self) -> Iterator[VocRecord]:
        return self.records()


# -- Pascal-Context as mmsegmentation converts it -----------------------------------------------
#: mmsegmentation's Pascal-Context PNG value -> ZS3's label id (table in data/splits/, with the
#: Detail category id and the name beside each row; see its SOURCES.md entry).
MMSEG_CONTEXT_TABLE = Path(__file__).resolve().parent / "splits" / \
    "pascal_context_mmseg_to_zs3.csv"


def mmseg_context_lut() -> np.ndarray:
    """uint8 lookup: mmsegmentation's ``SegmentationClassContext`` value (0 background, 1-59
    alphabetical) -> ZS3's label (0 background, 1-59 in ZS3's order); 255 stays 255, any other
    value becomes 255."""
    import csv

    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    with MMSEG_CONTEXT_TABLE.open(newline="") as f:
        for row in csv.DictReader(f):
            lut[int(row["mmseg_png_value"])] = int(row["zs3_label"])
    return lut


def convert_mmseg_context(src: Path, out: Path) -> int:
    """Rewrite every label PNG of ``src`` (mmsegmentation's Pascal-Context numbering) into
    ``out`` with ZS3's label ids, atomically (``out`` appears complete or not at all); returns
    the number of PNGs. A value that is no mmsegmentation label is an error naming the file."""
    src, out = Path(src), Path(out)
    pngs = sorted(src.glob("*.png")) if src.is_dir() else []
    if not pngs:
        raise DataError(f"{src}: no label PNGs (expected mmsegmentation's "
                        f"SegmentationClassContext folder)")
    lut = mmseg_context_lut()
    known = np.zeros(256, dtype=bool)
    known[lut != IGNORE_LABEL] = True
    known[IGNORE_LABEL] = True
    with atomic_directory(out) as tmp:
        for path in pngs:
            with Image.open(path) as im:
                label = np.asarray(im)
            bad = ~known[label]
            if bad.any():
                raise DataError(f"{path}: value {int(label[bad][0])} is no mmsegmentation "
                                f"Pascal-Context label (0-59, 255)")
            Image.fromarray(lut[label]).save(tmp / path.name)
    return len(pngs)
