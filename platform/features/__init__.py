"""Feature cache: segment embeddings (and mask logits) extracted once per segmenter + split.

- :func:`get_features` (``zeroseg extract CONFIG``): the cache entry of an :class:`ExtractConfig`,
  reused when its recorded inputs and shard hashes match, otherwise (re)built, in parallel on
  Ray actors when ``workers > 1``;
- :class:`FeatureCache`: streaming reads (per-image records for inference, training rows for
  generators and classifier retraining);
- :mod:`.cache`: storage format, key and integrity checks (see its docstring).
"""

from zeroseg.platform.features.cache import CACHE_FORMAT, KINDS, MASK_CODECS, cache_key
from zeroseg.platform.features.config import ExtractConfig
from zeroseg.platform.features.extract import ExtractResult, get_features
from zeroseg.platform.features.reader import CachedImage, FeatureCache, TrainFeatures

__all__ = [
    "CACHE_FORMAT",
    "KINDS",
    "MASK_CODECS",
    "CachedImage",
    "ExtractConfig",
    "ExtractResult",
    "FeatureCache",
    "TrainFeatures",
    "cache_key",
    "get_features",
]
