"""Project exceptions.

Every error a user can cause (bad file, bad field, unknown name) is raised as a
:class:`ZerosegError` whose message is one line naming the file or field and what was expected.
The CLI prints that line without a traceback and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations


class ZerosegError(Exception):
    """A user-facing error with a one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DataError(ZerosegError):
    """A dataset file (json, image, PNG, class file) is missing or does not match its format."""


class ConfigError(ZerosegError):
    """A config, split or class name is unknown or has the wrong type."""


class EmbeddingError(ZerosegError):
    """A class-embedding source cannot provide a valid vector for every class."""


class LeakageError(ZerosegError):
    """A training set still contains a class that the protocol says is unseen."""


class OutputError(ZerosegError):
    """An output path (folder or file) cannot be written: a parent that is a file, a read-only
    file system, no permission, a full disk."""
