"""Attribute embeddings for the synthetic benchmark (DESIGN.md section 4).

Each class is described by its attribute values (``ClassInfo.attributes``, e.g. colour=red,
shape=star) and a thing/stuff flag. Every such feature ``key=value`` owns a fixed random
direction in R^dim, drawn from a generator seeded by ``seed`` and a hash of the feature's text;
a class's clean vector is the sum of the directions of its features (a one-hot encoding times a
random projection). Because the direction depends only on the feature, a class gets the same
vector in every split that contains it, and an unseen composition ("red star") is the sum of
directions that seen classes ("red circle", "blue star") also use.

``noise`` makes the "text side" imperfect: each class gets a Gaussian perturbation whose expected
norm is ``noise`` times the clean vector's norm, seeded by ``noise_seed`` and the class name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import ClassInfo, Split
from zeroseg.platform.embeddings.config import ProviderConfig, option
from zeroseg.platform.embeddings.providers import EmbeddingProvider, register_provider
from zeroseg.platform.errors import ConfigError, EmbeddingError

#: fixed default seed of the projection: every run, every machine gets the same vectors
DEFAULT_SEED = 1729
THING_FEATURE = "kind=thing"
STUFF_FEATURE = "kind=stuff"


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


@dataclass(frozen=True)
class AttributesConfig(ProviderConfig):
    dim: int = option(64, minimum=1, doc="the embedding dimension")
    seed: int = option(DEFAULT_SEED, minimum=0, doc="seed of the fixed random projection")
    noise: float = option(0.0, minimum=0.0,
                          doc="norm of the per-class Gaussian noise relative to the clean vector")
    noise_seed: int = option(0, minimum=0, doc="seed of the per-class noise")
    normalize: bool = option(True, doc="L2-normalise every class vector")
    thing_flag: bool = option(True, doc="add a thing/stuff feature")
    keys: tuple[str, ...] | None = option(
        None, doc="attribute keys to use (default: all of each class's attributes)")


@register_provider
class AttributesProvider(EmbeddingProvider):
    name = "attributes"
    config_class = AttributesConfig
    config: AttributesConfig

    def features(self, info: ClassInfo) -> list[str]:
        keys = self.config.keys
        feats = sorted(f"{k}={v}" for k, v in info.attributes.items()
                       if keys is None or k in keys)
        if self.config.thing_flag:
            feats.append(THING_FEATURE if info.isthing else STUFF_FEATURE)
        return feats

    def key_material(self, split: Split) -> dict[str, Any]:
        material = super().key_material(split)
        material["features"] = [self.features(c) for c in split.classes]
        return material

    def source(self) -> str:
        return "attributes provider"

    def direction(self, feature: str) -> np.ndarray:
        """The fixed random direction of one ``key=value`` feature, N(0, 1/dim) entries."""
        rng = np.random.default_rng([self.config.seed, 0, _stable_int(feature)])
        return rng.standard_normal(self.config.dim) / np.sqrt(self.config.dim)

    def embed(self, split: Split) -> np.ndarray:
        cfg = self.config
        if cfg.keys is not None:
            present = sorted({k for c in split.classes for k in c.attributes})
            for key in cfg.keys:
                if key not in present:
                    raise ConfigError(
                        f"embeddings.attributes.keys: {key!r} is not an attribute of any class "
                        f"of split {split.name} (attributes: {', '.join(present) or 'none'})"
                    )
        out = np.empty((split.num_classes, cfg.dim), dtype=np.float64)
        for c in split.classes:
            if not any(k != "kind" for k in (f.split("=", 1)[0] for f in self.features(c))):
                raise EmbeddingError(
                    f"attributes provider: class {c.name!r} of split {split.name} has no "
                    f"attributes; expected ClassInfo.attributes (e.g. the synthetic split's "
                    f"colour/shape)"
                )
            clean = np.sum([self.direction(f) for f in self.features(c)], axis=0)
            if cfg.normalize:
                clean = clean / np.linalg.norm(clean)
            if cfg.noise > 0:
                rng = np.random.default_rng([cfg.noise_seed, 1, _stable_int(c.name)])
                z = rng.standard_normal(cfg.dim)
                clean = clean + z * (cfg.noise * np.linalg.norm(clean) / np.sqrt(cfg.dim))
                if cfg.normalize:
                    clean = clean / np.linalg.norm(clean)
            out[c.index] = clean
        return out.astype(np.float32)
