"""Class embeddings from a word-vector file read with gensim (word2vec, fastText .vec, GloVe).

Formats (``format: auto`` picks by extension, ignoring a trailing ``.gz``/``.bz2``):

- ``binary``: word2vec binary (``.bin``), e.g. GoogleNews-vectors-negative300.bin;
- ``text``: word2vec text (``.txt``, ``.vec``): a "count dim" header line, then one word and its
  numbers per line; ``no_header: true`` reads files without the header (GloVe);
- ``kv``: gensim's native ``KeyedVectors.save`` format. It is a pickle, and zeroseg never
  unpickles user files unless told to: it needs ``allow_pickle: true``. Converting once with
  ``KeyedVectors.load(p).save_word2vec_format(out, binary=True)`` avoids that.

A class name becomes words by splitting on spaces, ``-``, ``_`` and ``/`` ("traffic light",
"sky-other-merged"), after replacing it by its alias when ``aliases`` has one; the class vector is
the mean of its word vectors. A word missing from the vocabulary is retried in lower case
(``lowercase_fallback``); if still missing, the whole request fails naming the word, the class
and the file: a class silently left out would make the vocabulary lie.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.embeddings.config import ProviderConfig, option
from zeroseg.platform.embeddings.providers import EmbeddingProvider, register_provider
from zeroseg.platform.errors import ConfigError, EmbeddingError

log = logging.getLogger(__name__)

FORMATS = ("auto", "binary", "text", "kv")
_SUFFIX_FORMAT = {".bin": "binary", ".txt": "text", ".vec": "text", ".kv": "kv"}
_WORD_SPLIT = re.compile(r"[\s\-_/]+")


def split_words(phrase: str) -> list[str]:
    """Words of a class name or alias: split on whitespace, '-', '_' and '/'."""
    return [w for w in _WORD_SPLIT.split(phrase) if w]


@dataclass(frozen=True)
class Word2VecConfig(ProviderConfig):
    path: str = option(doc="the path of a word-vector file (.bin, .txt, .vec, .kv)")
    format: str = option("auto", choices=FORMATS, doc="the file format")
    aliases: dict[str, str] | None = option(None, doc="class name -> phrase to embed instead")
    lowercase_fallback: bool = option(True, doc="retry a missing word in lower case")
    normalize: bool = option(False, doc="L2-normalise every class vector")
    no_header: bool = option(False, doc="text format without the 'count dim' header (GloVe)")
    limit: int | None = option(None, minimum=1, doc="read only the first N words of the file")
    allow_pickle: bool = option(False, doc="allow gensim's native (pickled) .kv format")

    def check(self) -> None:
        if not self.path:
            raise ConfigError("embeddings.word2vec.path: expected the path of a vectors file")
        fmt = self.resolved_format()
        if fmt == "kv" and (self.no_header or self.limit is not None):
            raise ConfigError(
                "embeddings.word2vec: no_header and limit apply to word2vec files, not .kv files")
        if fmt == "binary" and self.no_header:
            raise ConfigError("embeddings.word2vec.no_header: only text files can lack a header")

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        name = Path(self.path).name.lower()
        for ext in (".gz", ".bz2"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        fmt = _SUFFIX_FORMAT.get(Path(name).suffix)
        if fmt is None:
            raise ConfigError(
                f"embeddings.word2vec.format: cannot tell the format of {self.path} from its "
                f"extension (expected .bin, .txt, .vec or .kv); set format to binary, text or kv"
            )
        return fmt


@register_provider
class Word2VecProvider(EmbeddingProvider):
    name = "word2vec"
    config_class = Word2VecConfig
    config: Word2VecConfig
    missing_hint = " (expected a word2vec .bin/.txt file or a gensim .kv file)"

    def input_files(self) -> dict[str, Path]:
        path = Path(self.config.path)
        files = {"vectors": path}
        if self.config.resolved_format() == "kv" and path.parent.is_dir():
            # KeyedVectors.save puts large arrays beside the pickle as NAME.<attr>.npy
            for extra in sorted(path.parent.glob(f"{path.name}.*.npy")):
                files[f"vectors:{extra.name}"] = extra
        return files

    def source(self) -> str:
        return str(self.config.path)

    def library_versions(self) -> dict[str, str]:
        import gensim

        return {"gensim": gensim.__version__}

    def load(self) -> Any:
        """The file's gensim ``KeyedVectors``."""
        from gensim.models import KeyedVectors

        cfg = self.config
        path = Path(cfg.path)
        fmt = cfg.resolved_format()
        if fmt == "kv" and not cfg.allow_pickle:
            raise EmbeddingError(
                f"word2vec file {path}: gensim's .kv format is a pickle and is not loaded unless "
                f"allow_pickle is true; or convert it once with save_word2vec_format(binary=True)"
            )
        try:
            if fmt == "kv":
                kv = KeyedVectors.load(str(path))
            else:
                kv = KeyedVectors.load_word2vec_format(
                    str(path), binary=fmt == "binary", limit=cfg.limit, no_header=cfg.no_header)
        except (ValueError, EOFError, IndexError, UnicodeDecodeError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise EmbeddingError(
                f"word2vec file {path}: cannot read it as {fmt} format ({type(exc).__name__}: "
                f"{reason}); expected a {fmt} word-vector file (set format if the extension lies)"
            ) from None
        if not isinstance(kv, KeyedVectors):
            raise EmbeddingError(
                f"word2vec file {path}: holds a {type(kv).__name__}, expected KeyedVectors")
        log.info("word2vec: %s has %d words of dimension %d", path, len(kv), kv.vector_size)
        return kv

    def phrase(self, name: str) -> str:
        aliases = self.config.aliases or {}
        return aliases.get(name, name)

    def embed(self, split: Split) -> np.ndarray:
        kv = self.load()
        out = np.empty((split.num_classes, kv.vector_size), dtype=np.float64)
        missing: list[tuple[str, str]] = []
        for c in split.classes:
            words = split_words(self.phrase(c.name))
            if not words:
                raise EmbeddingError(
                    f"word2vec: class {c.name!r} has no words to embed (alias "
                    f"{self.phrase(c.name)!r}); expected a name or alias with letters")
            vectors = []
            for word in words:
                vec = self._lookup(kv, word)
                if vec is None:
                    missing.append((word, c.name))
                else:
                    vectors.append(vec)
            if len(vectors) == len(words):
                out[c.index] = np.mean(vectors, axis=0)
        if missing:
            word, cls = missing[0]
            more = ""
            if len(missing) > 1:
                rest = ", ".join(f"{w!r} ({n})" for w, n in missing[1:6])
                more = f"; also missing: {rest}" + (" ..." if len(missing) > 6 else "")
            raise EmbeddingError(
                f"word2vec file {self.config.path}: no vector for word {word!r} of class {cls!r}"
                f"{more}; expected every word in the vocabulary (map the class to another "
                f"phrase with aliases: {{class: phrase}})"
            )
        if self.config.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out.astype(np.float32)

    def _lookup(self, kv: Any, word: str) -> np.ndarray | None:
        if word in kv.key_to_index:
            return np.asarray(kv[word], dtype=np.float64)
        if self.config.lowercase_fallback and word.lower() in kv.key_to_index:
            return np.asarray(kv[word.lower()], dtype=np.float64)
        return None
