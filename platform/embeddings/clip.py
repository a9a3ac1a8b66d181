"""Class embeddings from an open_clip text encoder and a local checkpoint.

The model is built exactly as a user would: ``open_clip.create_model(model, pretrained=PATH)``
with ``PATH`` a local file (zeroseg never downloads weights: a missing file is an error), and
``open_clip.get_tokenizer(model)``. ``model`` is a built-in open_clip architecture
(``ViT-B-32``; OpenAI's weights need the ``-quickgelu`` variants) or, with ``model_config``, an
architecture described by a json file (registered with ``open_clip.add_model_config``; the
file's stem is the model name).

Each class name (its alias if ``aliases`` has one; otherwise, with ``clean_names``, COCO
suffixes "-merged"/"-other" dropped and "_" read as a space) is put into every prompt template;
each prompt's text embedding is L2-normalised, the class vector is their mean, normalised again
(the usual prompt ensemble).

torchvision's compiled ops may not load on CPU-only machines; the project's compat shim is
applied before open_clip is imported (``ensure_torchvision``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.compat import ensure_torchvision
from zeroseg.platform.data.classes import Split
from zeroseg.platform.embeddings.config import ProviderConfig, option
from zeroseg.platform.embeddings.providers import EmbeddingProvider, register_provider
from zeroseg.platform.errors import ConfigError, EmbeddingError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"

#: a small ensemble of ImageNet-style prompts
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a photo of a large {}.",
    "a photo of a small {}.",
)


#: PADing's prompts (``IMAGENET_TEMPLATES_SELECT`` of its ``third_party/imagenet_templates.py``,
#: heshuting555/PADing@5d81719c96a2), used with CLIP ViT-B/16 and raw class names
#: (``clean_names: false``) for its panoptic and semantic class vectors.
PADING_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "A photo of a {} in the scene",
)


def clean_class_name(name: str) -> str:
    """'sky-other-merged' -> 'sky', 'traffic_light' -> 'traffic light'."""
    for suffix in ("-merged", "-other"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return " ".join(name.replace("_", " ").split())


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ClipConfig(ProviderConfig):
    checkpoint: str = option(doc="the path of a local open_clip checkpoint (a state dict file)")
    model: str | None = option(None, doc=f"an open_clip architecture (default {DEFAULT_MODEL})")
    model_config: str | None = option(
        None, doc="a json file describing a custom architecture (its stem is the model name)")
    templates: tuple[str, ...] = option(DEFAULT_TEMPLATES, doc="prompt templates with one '{}'")
    aliases: dict[str, str] | None = option(None, doc="class name -> text to prompt with")
    clean_names: bool = option(True, doc="drop -merged/-other suffixes and read '_' as space")
    device: str = option("cpu", in_key=False, doc="torch device for the text encoder")
    batch_size: int = option(256, minimum=1, in_key=False, doc="prompts encoded per batch")

    def check(self) -> None:
        where = "embeddings.clip"
        if not self.checkpoint:
            raise ConfigError(f"{where}.checkpoint: expected the path of a local checkpoint file")
        if not self.templates:
            raise ConfigError(f"{where}.templates: expected at least one prompt template")
        for i, template in enumerate(self.templates):
            if template.count("{}") != 1:
                raise ConfigError(f"{where}.templates[{i}]: {template!r} must contain exactly "
                                  f"one '{{}}' where the class name goes")
        if self.model is not None and ":" in self.model:
            raise ConfigError(f"{where}.model: {self.model!r} uses a hub/local-dir schema; "
                              f"expected an open_clip architecture name (nothing is downloaded)")
        if self.model_config is not None and self.model is not None \
                and Path(self.model_config).stem != self.model:
            raise ConfigError(f"{where}.model: {self.model!r} differs from the name of "
                              f"model_config {self.model_config} (open_clip names a config by "
                              f"its file stem); leave model out or make them agree")

    def resolved_model(self) -> str:
        if self.model_config is not None:
            return Path(self.model_config).stem
        return self.model or DEFAULT_MODEL


@register_provider
class ClipProvider(EmbeddingProvider):
    name = "clip"
    config_class = ClipConfig
    config: ClipConfig
    missing_hint = (" (expected a local open_clip checkpoint file: zeroseg never downloads "
                    "weights; fetch e.g. ViT-B-32 once and pass its path)")

    def input_files(self) -> dict[str, Path]:
        files = {"checkpoint": Path(self.config.checkpoint)}
        if self.config.model_config is not None:
            files["model_config"] = Path(self.config.model_config)
        return files

    def source(self) -> str:
        return str(self.config.checkpoint)

    def key_material(self, split: Split) -> dict[str, Any]:
        material = super().key_material(split)
        material["model"] = self.config.resolved_model()
        material["texts"] = [self.class_text(c.name) for c in split.classes]
        material["open_clip"] = _dist_version("open_clip_torch")
        return material

    def library_versions(self) -> dict[str, str]:
        return {"open_clip_torch": _dist_version("open_clip_torch"),
                "torch": _dist_version("torch")}

    def class_text(self, name: str) -> str:
        aliases = self.config.aliases or {}
        if name in aliases:
            return aliases[name]
        return clean_class_name(name) if self.config.clean_names else name

    def prompts(self, split: Split) -> list[list[str]]:
        """For each class, its prompts (one per template)."""
        return [[t.replace("{}", self.class_text(c.name)) for t in self.config.templates]
                for c in split.classes]

    # -- model loading ---------------------------------------------------------------------------
    def _open_clip(self) -> Any:
        ensure_torchvision()
        import open_clip

        cfg = self.config
        name = cfg.resolved_model()
        if cfg.model_config is not None:
            self._register_model_config(open_clip, Path(cfg.model_config))
        if name not in open_clip.list_models():
            raise ConfigError(
                f"embeddings.clip.model: {name!r} is not an open_clip architecture (e.g. "
                f"{', '.join(open_clip.list_models()[:6])}, ...); or give model_config")
        return open_clip

    @staticmethod
    def _register_model_config(open_clip: Any, path: Path) -> None:
        try:
            wanted = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EmbeddingError(f"clip model_config {path}: not readable json ({exc}); "
                                 f"expected an open_clip model config") from None
        if not isinstance(wanted, dict) or not all(
                k in wanted for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise EmbeddingError(f"clip model_config {path}: expected an open_clip model config "
                                 f"with embed_dim, vision_cfg and text_cfg")
        if open_clip.get_model_config(path.stem) != wanted:
            open_clip.add_model_config(path)

    def load_model(self) -> tuple[Any, Any]:
        """(model in eval mode on the configured device, tokenizer)."""
        open_clip = self._open_clip()
        cfg = self.config
        name = cfg.resolved_model()
        checkpoint = Path(cfg.checkpoint).resolve()
        try:
            model = open_clip.create_model(name, pretrained=str(checkpoint), device=cfg.device)
        except Exception as exc:  # open_clip and torch raise many kinds; report them as one
            reason = " ".join(str(exc).split())[:240]
            raise EmbeddingError(
                f"clip checkpoint {checkpoint}: cannot be loaded into open_clip model {name} "
                f"({type(exc).__name__}: {reason}); expected a state dict of that architecture"
            ) from None
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # e.g. a tokenizer that would need a download
            raise EmbeddingError(f"clip: no tokenizer for model {name} without a download "
                                 f"({type(exc).__name__}: {exc}); expected an offline tokenizer"
                                 ) from None
        model.eval()
        return model, tokenizer

    def embed(self, split: Split) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model, tokenizer = self.load_model()
        prompts = self.prompts(split)
        flat = [p for per_class in prompts for p in per_class]
        bs = self.config.batch_size
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(flat), bs):
                tokens = tokenizer(flat[start:start + bs]).to(self.config.device)
                feats = model.encode_text(tokens).float()
                chunks.append(F.normalize(feats, dim=-1).cpu())
        per_prompt = torch.cat(chunks).reshape(split.num_classes, len(self.config.templates), -1)
        out = F.normalize(per_prompt.mean(dim=1), dim=-1)
        log.info("clip: %d classes x %d prompts encoded with %s", split.num_classes,
                 len(self.config.templates), self.config.resolved_model())
        return out.numpy().astype(np.float32)
