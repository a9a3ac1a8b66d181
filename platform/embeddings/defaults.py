"""The default class-embedding provider of every split, and the up-front check of a provider.

Every split of ``zeroseg data list`` has a default that works offline
(:func:`default_embedding_config`):

- a split whose classes have attributes (the synthetic benchmark): ``attributes``;
- otherwise the shipped file whose manifest entry lists the split in ``default_for``: the
  authors' vectors where they exist (ZSI's COCO 2014 word2vec, SPNet's COCO-Stuff and VOC
  word2vec, ZS3's VOC / Pascal-Context vectors);
- ``coco-panoptic/zsp-119-14``: PADing computed CLIP ViT-B/16 text embeddings at start-up and
  shipped none, and no CLIP weights ship with zeroseg, so the default is ``coco_panoptic_word2vec``,
  derived from SPNet's COCO-Stuff word2vec through the COCO panoptic merge table (see
  ``files.merged_vectors``). Numbers with it are not comparable to the paper's; for PADing's
  vectors give ``provider: clip`` with a local OpenAI ViT-B/16 checkpoint
  (``model: ViT-B-16-quickgelu``, ``templates``: :data:`~.clip.PADING_TEMPLATES`,
  ``clean_names: false``).

:func:`check_embeddings` builds (or finds in the cache) a split's matrix with a provider config
and turns any problem (unknown provider or option, missing file, a class the file does not cover,
a bad vector) into one line naming the split, the provider, the file and the first class
concerned, plus the split's default when the config is not it. It is meant to run before any
training, so that a run never fails after hours of segmenter training for want of a vector.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.registry import as_split
from zeroseg.platform.embeddings.core import compute_class_embeddings
from zeroseg.platform.embeddings.files import default_file_for
from zeroseg.platform.embeddings.providers import EmbeddingConfig
from zeroseg.platform.errors import ConfigError, ZerosegError

#: ``{"provider": DEFAULT_PROVIDER}`` stands for the split's default
DEFAULT_PROVIDER = "default"


def default_embedding_config(split: Split | str) -> dict[str, Any]:
    """``{"provider": ..., **options}`` of ``split``'s default class vectors (module docstring);
    a validation view (``NAME:val``) has its split's default. ConfigError for a split that has
    none (a user's dataset without attributes): it names what to give instead."""
    the_split = as_split(split)
    if any(c.attributes for c in the_split.classes):
        return {"provider": "attributes"}
    shipped = default_file_for(the_split.name)
    if shipped is None:
        raise ConfigError(
            f"embeddings: split {the_split.name} has no default class vectors (no shipped file "
            f"lists it and its classes have no attributes); expected an embedding provider, e.g. "
            f"file with path=VECTORS.csv and layout=rows_in_split_order, word2vec with "
            f"path=VECTORS.bin, or clip with checkpoint=CHECKPOINT.pt")
    return {"provider": "file", "name": shipped.name}


def resolve_embedding_config(split: Split | str,
                             provider_config: Mapping[str, Any] | EmbeddingConfig | None
                             ) -> Mapping[str, Any] | EmbeddingConfig:
    """``provider_config``, or the split's default for ``None`` / ``{"provider": "default"}``."""
    if provider_config is None or (isinstance(provider_config, Mapping)
                                   and provider_config.get("provider") == DEFAULT_PROVIDER):
        if isinstance(provider_config, Mapping) and len(provider_config) > 1:
            extra = sorted(k for k in provider_config if k != "provider")
            raise ConfigError(f"embeddings.{DEFAULT_PROVIDER}: takes no options (got "
                              f"{', '.join(extra)}); name the provider to set options")
        return default_embedding_config(split)
    return provider_config


def check_embeddings(split: Split | str,
                     provider_config: Mapping[str, Any] | EmbeddingConfig | None = None, *,
                     cache_dir: str | os.PathLike | None = None) -> None:
    """Make sure ``provider_config`` gives a valid vector for every class of ``split``.

    ``split``: a :class:`Split` or a registry name. ``provider_config``: ``{"provider": NAME,
    **options}`` (what ``embedding`` of a pipeline config gives), an :class:`EmbeddingConfig`, or
    ``None`` / ``{"provider": "default"}`` for the split's default. The matrix is computed
    (cheap for vector files) and, with ``cache_dir``, cached where the pipeline's embedding stage
    finds it. Raises the provider's one-line :class:`ConfigError` / :class:`EmbeddingError` /
    :class:`DataError`, prefixed with the split and provider and ending with the split's default
    when the config is not the default.
    """
    the_split = as_split(split)
    config = resolve_embedding_config(the_split, provider_config)
    name = (config.provider if isinstance(config, EmbeddingConfig)
            else config.get("provider") if isinstance(config, Mapping) else None)
    try:
        compute_class_embeddings(the_split, config, cache_dir)
    except ZerosegError as exc:
        note = _default_note(the_split, config)
        if note and note.rsplit(" with ", 1)[-1] in str(exc):
            note = ""  # the provider's message names the default already
        raise type(exc)(f"class embeddings of split {the_split.name} (provider {name}): {exc}"
                        f"{note}") from None


def _default_note(split: Split, config: Mapping[str, Any] | EmbeddingConfig) -> str:
    try:
        default = default_embedding_config(split)
    except ConfigError:
        return ""
    given = config.to_dict() if isinstance(config, EmbeddingConfig) else dict(config)
    if all(given.get(k) == v for k, v in default.items()):
        return ""
    options = ", ".join(f"{k}={v}" for k, v in default.items() if k != "provider")
    return (f"; the default of split {split.name.split(':', 1)[0]} is provider "
            f"{default['provider']}" + (f" with {options}" if options else ""))
