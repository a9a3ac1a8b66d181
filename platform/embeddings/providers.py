"""The provider interface, the registry of providers by name, and the config that selects one.

A provider turns a :class:`Split`'s classes into one vector per class. It is registered under a
name (``"attributes"``, ``"word2vec"``, ``"file"``, ``"clip"``, or a plug-in's own) with
:func:`register_provider`; a config ``{"provider": NAME, **options}`` selects it, and the options
are validated against the provider's :class:`ProviderConfig` dataclass.

What a provider must describe for the cache (see ``cache.py``):

- :meth:`EmbeddingProvider.key_material`: everything besides files that determines its output
  (its options and the class names; providers add what else they read, e.g. attributes or ids);
- :meth:`EmbeddingProvider.input_files`: files it reads (vectors, checkpoints). Their size and
  content hash (sampled, plus the modification time, above 64 MiB) go into the key, so a changed
  file means a rebuild.
- ``version``: bump it when the same inputs would now produce different vectors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.embeddings.cache import file_fingerprint
from zeroseg.platform.embeddings.config import ProviderConfig, parse_provider_config
from zeroseg.platform.errors import ConfigError, EmbeddingError


class EmbeddingProvider(ABC):
    """Base class of class-embedding providers; one instance per validated config."""

    name: ClassVar[str]
    config_class: ClassVar[type[ProviderConfig]]
    version: ClassVar[int] = 1
    #: appended to the "file does not exist" message (e.g. how to get the file)
    missing_hint: ClassVar[str] = ""

    def __init__(self, config: ProviderConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}")
        self.config = config

    # -- what the cache needs ------------------------------------------------------------------
    def key_material(self, split: Split) -> dict[str, Any]:
        """Inputs other than files that determine the output; JSON-compatible."""
        return {
            "provider": self.name,
            "provider_version": self.version,
            "config": self.config.key_dict(),
            "classes": split.names,
        }

    def input_files(self) -> dict[str, Path]:
        """Files read by :meth:`embed`, by role (``{"vectors": path}``)."""
        return {}

    def library_versions(self) -> dict[str, str]:
        """Versions of third-party libraries used, recorded in the cache sidecar."""
        return {}

    def check_inputs(self) -> None:
        """Raise :class:`EmbeddingError` when an input file is missing (before any hashing)."""
        for role, path in self.input_files().items():
            if not Path(path).is_file():
                raise EmbeddingError(
                    f"{self.name}: {role} file {path} does not exist{self.missing_hint}"
                )

    def fingerprint(self, split: Split) -> dict[str, Any]:
        """Everything that identifies this provider's output for ``split`` (the cache key input)."""
        self.check_inputs()
        material = self.key_material(split)
        material["inputs"] = {role: file_fingerprint(path, role=role, provider=self.name)
                              for role, path in sorted(self.input_files().items())}
        return material

    def source(self) -> str:
        """What to name in error messages: the file read, or the provider."""
        files = self.input_files()
        if files:
            return ", ".join(str(p) for p in files.values())
        return f"{self.name} provider"

    # -- the work --------------------------------------------------------------------------------
    @abstractmethod
    def embed(self, split: Split) -> np.ndarray:
        """Return a [num_classes, dim] matrix in the split's contiguous class order."""


_PROVIDERS: dict[str, type[EmbeddingProvider]] = {}


def register_provider(cls: type[EmbeddingProvider]) -> type[EmbeddingProvider]:
    """Class decorator: make ``cls`` selectable as ``{"provider": cls.name}``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, ProviderConfig)):
        raise TypeError(f"{cls.__name__}.config_class must derive from ProviderConfig")
    existing = _PROVIDERS.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"embedding provider {name!r} is already registered by {existing!r}")
    _PROVIDERS[name] = cls
    return cls


def provider_names() -> list[str]:
    return sorted(_PROVIDERS)


def get_provider_class(name: str) -> type[EmbeddingProvider]:
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            f"embeddings.provider: unknown provider {name!r} (known: {', '.join(provider_names())})"
        ) from None


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which provider to use and its validated options."""

    provider: str
    options: ProviderConfig

    def __post_init__(self) -> None:
        cls = get_provider_class(self.provider)
        if not isinstance(self.options, cls.config_class):
            raise ConfigError(
                f"embeddings.{self.provider}: options must be a {cls.config_class.__name__}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingConfig:
        """``{"provider": NAME, **options}`` -> validated config."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"embeddings: expected a mapping with a 'provider' key, got {type(data).__name__}"
            )
        if "provider" not in data:
            raise ConfigError(
                f"embeddings.provider: required key is missing (expected one of "
                f"{', '.join(provider_names())})"
            )
        name = data["provider"]
        if not isinstance(name, str):
            raise ConfigError(f"embeddings.provider: expected a string, got {name!r}")
        provider_cls = get_provider_class(name)
        options = {k: v for k, v in data.items() if k != "provider"}
        parsed = parse_provider_config(provider_cls.config_class, options, f"embeddings.{name}")
        return cls(provider=name, options=parsed)

    @classmethod
    def coerce(cls, config: Mapping[str, Any] | EmbeddingConfig) -> EmbeddingConfig:
        return config if isinstance(config, EmbeddingConfig) else cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, **self.options.to_dict()}

    def create_provider(self) -> EmbeddingProvider:
        return get_provider_class(self.provider)(self.options)
