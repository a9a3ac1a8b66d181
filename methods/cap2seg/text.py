"""Captions as token ids: the word-level vocabulary of the engine trained from scratch, the
``[CLS] caption [SEP] class name [SEP]`` pairs, and exact word matching (Cap2Seg Table 1's
"Exact Match" baseline: the class name or its plural among the caption's words).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from zeroseg.platform.compat import ensure_torchvision

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words (hyphenated words kept whole: "disc-like")."""
    return _WORD.findall(text.lower())


class WordVocab:
    """Word -> id, specials first (``[PAD]`` = 0), then every word of the corpus sorted, so the
    ids depend on the corpus only."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if self.tokens[:len(SPECIALS)] != list(SPECIALS):
            raise ValueError("a WordVocab starts with the special tokens")

    @classmethod
    def build(cls, texts: Iterable[str]) -> WordVocab:
        corpus = sorted({w for text in texts for w in words(text)})
        return cls([*SPECIALS, *corpus])

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(w, unk) for w in words(text)]

    def encode(self, captions: Sequence[str], descriptions: Sequence[str], max_length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return encode_pairs(self, captions, descriptions, max_length)

    def describe(self) -> list[str]:
        return self.tokens

    def pair(self, caption: str, description: str, max_length: int
             ) -> tuple[list[int], list[int]]:
        """``[CLS] caption [SEP] description [SEP]``, caption truncated first (as BERT's
        ``_truncate_seq_pair`` trims the longer side; the description is a short class name),
        padded to ``max_length``: (input ids, token type ids)."""
        a, b = self.ids(caption), self.ids(description)
        b = b[:max(1, max_length - 4)]
        a = a[:max(0, max_length - 3 - len(b))]
        ids = [self.index[CLS], *a, self.index[SEP], *b, self.index[SEP]]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        pad = max_length - len(ids)
        return ids + [0] * pad, types + [0] * pad


def encode_pairs(vocab: WordVocab, captions: Sequence[str], descriptions: Sequence[str],
                 max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays ``[N, L]``: input ids, token types, attention mask."""
    ids, types = zip(*(vocab.pair(c, d, max_length)
                       for c, d in zip(captions, descriptions, strict=True)), strict=True)
    input_ids = np.asarray(ids, dtype=np.int64)
    return input_ids, np.asarray(types, dtype=np.int64), (input_ids != 0).astype(np.int64)


def exact_match(caption: str, name: str) -> bool:
    """The class name's words appear consecutively among the caption's words, the last one
    possibly in the plural (``-s`` / ``-es``)."""
    cap, target = words(caption), words(name)
    if not target:
        return False
    last = {target[-1], target[-1] + "s", target[-1] + "es"}
    n = len(target)
    for i in range(len(cap) - n + 1):
        if cap[i:i + n - 1] == target[:-1] and cap[i + n - 1] in last:
            return True
    return False


class PretrainedTokenizer:
    """The WordPiece tokenizer saved with a local pretrained BERT (``engine.checkpoint``): the
    same ``[CLS] caption [SEP] class name [SEP]`` pairs, the caption truncated first."""

    def __init__(self, path: str):
        ensure_torchvision()
        from transformers import AutoTokenizer

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, captions: Sequence[str], descriptions: Sequence[str], max_length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.tokenizer(list(captions), list(descriptions), max_length=max_length,
                             truncation="only_first", padding="max_length", return_tensors="np")
        return (out["input_ids"].astype(np.int64), out["token_type_ids"].astype(np.int64),
                out["attention_mask"].astype(np.int64))

    def describe(self) -> dict[str, str]:
        return {"checkpoint": self.path}
