"""What a sweep optimises (:class:`Objective`) and where its Optuna study lives
(:func:`optuna_storage_url`): the two facts about sweeps that the dashboard reads too, kept free
of torch and Ray so that reading them costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Objective:
    task: str = "semantic"
    metric: str = "iou"
    setting: str = "gzsl"
    subset: str = "hm"

    @property
    def name(self) -> str:
        """The store's key for it: ``val/<task>/<setting>/<subset>/<metric>``."""
        return f"val/{self.task}/{self.setting}/{self.subset}/{self.metric}"


def optuna_storage_url(store_url: str) -> str:
    """The Optuna study's SQLite file, next to a SQLite results store (or in the work dir)."""
    if "://" in store_url and not store_url.startswith("sqlite:///"):
        return ""
    path = Path(store_url[len("sqlite:///"):] if store_url.startswith("sqlite:///")
                else store_url)
    return f"sqlite:///{path.with_name('optuna.db').resolve()}"
