"""Where a COCO-format dataset keeps its files.

The synthetic benchmark and real COCO share one layout (``zeroseg data synth`` writes it)::

    ROOT/annotations/instances_{split}.json   COCO instances (RLE / polygons)
    ROOT/annotations/panoptic_{split}.json    COCO panoptic; PNGs in ROOT/panoptic_{split}/
    ROOT/annotations/captions_{split}.json    COCO captions
    ROOT/annotations/classes.json             synthetic only: classes, attributes, roles
    ROOT/{split}/                             images
    ROOT/stuff_{split}/                       COCO-Stuff-style semantic PNGs (255 = unlabeled)

For real COCO, ``split`` is e.g. ``train2017`` / ``val2017``; every folder can be overridden
(COCO-Stuff ships its PNGs as ``stuffthingmaps_trainval2017/{train2017,val2017}``).
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
