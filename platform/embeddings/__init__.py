"""Class embeddings: one vector per class of a split, from a provider chosen by name.

>>> from zeroseg.platform.embeddings import get_class_embeddings
>>> E = get_class_embeddings(split, {"provider": "attributes", "dim": 64}, cache_dir="runs/emb")

Providers (``provider_names()``): ``attributes`` (synthetic benchmark), ``word2vec`` (gensim
files), ``file`` (per-class vector files, the authors' ones ship with zeroseg), ``clip``
(open_clip text encoder with a local checkpoint). New ones plug in with
:func:`register_provider`. Matrices are validated (shape, finite, no zero rows) and cached on
disk keyed by provider, options, class names and input-file fingerprints (see ``cache.py``).

Every registry split has a default provider (:func:`default_embedding_config`), and
:func:`check_embeddings` validates a provider for a split up front, in one line naming the
provider, the file and the first class it does not cover (``defaults.py``).
"""

from zeroseg.platform.embeddings import attributes, clip, files, word2vec  # noqa: F401 (register)
from zeroseg.platform.embeddings.cache import EmbeddingCache, file_fingerprint
from zeroseg.platform.embeddings.config import ProviderConfig, option
from zeroseg.platform.embeddings.core import (
    EmbeddingResult,
    compute_class_embeddings,
    get_class_embeddings,
    validate_embeddings,
)
from zeroseg.platform.embeddings.defaults import (
    check_embeddings,
    default_embedding_config,
    resolve_embedding_config,
)
from zeroseg.platform.embeddings.files import merged_vectors, shipped_files
from zeroseg.platform.embeddings.providers import (
    EmbeddingConfig,
    EmbeddingProvider,
    get_provider_class,
    provider_names,
    register_provider,
)
from zeroseg.platform.embeddings.summary import EmbedSummary, embed_command

__all__ = [
    "EmbedSummary",
    "EmbeddingCache",
    "EmbeddingConfig",
    "EmbeddingProvider",
    "EmbeddingResult",
    "ProviderConfig",
    "check_embeddings",
    "compute_class_embeddings",
    "default_embedding_config",
    "embed_command",
    "file_fingerprint",
    "get_class_embeddings",
    "get_provider_class",
    "merged_vectors",
    "option",
    "provider_names",
    "register_provider",
    "resolve_embedding_config",
    "shipped_files",
    "validate_embeddings",
]
