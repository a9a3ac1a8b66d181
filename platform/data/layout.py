"""Where a COCO-format dataset keeps its files.

The synthetic benchmark and real COCO share one layout (``zeroseg data synth`` writes it)::

    ROOT/annotations/instances_{split}.json   COCO instances (RLE / polygons)
    ROOT/annotations/panoptic_{split}.json    COCO panoptic; PNGs in ROOT/panoptic_{split}/
    ROOT/annotations/captions_{split}.json    COCO captions
    ROOT/annotations/classes.json             synthetic only: classes, attributes, roles
    ROOT/annotations/image_info_{split}.json  optional: the images, when no annotation json
                                              lists them (COCO's test-dev convention)
    ROOT/{split}/                             images
    ROOT/stuff_{split}/                       COCO-Stuff-style semantic PNGs (255 = unlabeled)

For real COCO, ``split`` is e.g. ``train2017`` / ``val2017``; every folder can be overridden
(COCO-Stuff ships its PNGs as ``stuffthingmaps_trainval2017/{train2017,val2017}``), and
``image_set`` names a VOC ``ImageSets`` file listing the split's images (see :func:`voc_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zeroseg.platform.errors import DataError


@dataclass(frozen=True)
class CocoLayout:
    root: Path
    split: str
    images_dir: Path | None = None
    panoptic_dir: Path | None = None
    semantic_dir: Path | None = None
    image_set: Path | None = None  # a VOC ImageSets file: the images of this split

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"

    @property
    def instances_json(self) -> Path:
        return self.annotations / f"instances_{self.split}.json"

    @property
    def panoptic_json(self) -> Path:
        return self.annotations / f"panoptic_{self.split}.json"

    @property
    def captions_json(self) -> Path:
        return self.annotations / f"captions_{self.split}.json"

    @property
    def image_info_json(self) -> Path:
        return self.annotations / f"image_info_{self.split}.json"

    @property
    def classes_json(self) -> Path:
        return self.annotations / "classes.json"

    @property
    def images(self) -> Path:
        return Path(self.images_dir) if self.images_dir else self.root / self.split

    @property
    def panoptic_pngs(self) -> Path:
        default = self.root / f"panoptic_{self.split}"
        return Path(self.panoptic_dir) if self.panoptic_dir else default

    @property
    def semantic_pngs(self) -> Path:
        return Path(self.semantic_dir) if self.semantic_dir else self.root / f"stuff_{self.split}"

    def require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise DataError(
                f"{path}: {what} not found (dataset root {self.root}, split {self.split})")
        return path


#: The VOC-style trees zeroseg reads (a root holding JPEGImages/): label folder, image sets.
VOC_TREES = {
    "voc12": ("SegmentationClass", "ImageSets/Segmentation"),
    "pascal-context": ("SegmentationClassContext", "ImageSets/SegmentationContext"),
}


def voc_layout(root: Path, split: str, dataset: str = "voc12") -> CocoLayout:
    """A VOC tree as a layout: images ``JPEGImages/``, labels ``SegmentationClass/`` (VOC 2012)
    or ``SegmentationClassContext/`` (Pascal-Context, as mmsegmentation's converter writes it),
    the images of ``split`` listed in ``ImageSets/.../{split}.txt``."""
    labels, sets = VOC_TREES[dataset]
    root = Path(root)
    return CocoLayout(root, split, images_dir=root / "JPEGImages",
                      semantic_dir=root / labels, image_set=root / sets / f"{split}.txt")


def dataset_layout(root: Path, split: str, dataset: str | None = None) -> CocoLayout:
    """The layout of ``split`` of a dataset: VOC trees for ``voc12`` / ``pascal-context``, the
    COCO layout for everything else."""
    if dataset in VOC_TREES:
        return voc_layout(root, split, dataset)
    return CocoLayout(root, split)
