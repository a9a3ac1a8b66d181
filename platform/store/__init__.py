"""The results store: runs, metrics, curves, sweeps (SQLAlchemy; SQLite default, PostgreSQL by
URL). See :mod:`.store` for the concurrency design and :mod:`.schema` for the tables."""

from zeroseg.platform.store.records import (
    PRIMARY_METRIC,
    CurveRecord,
    MetricRecord,
    RunRecord,
    StoreError,
    code_version,
    dataset_folder_fingerprint,
    metrics_from_eval,
    run_key,
    trial_uid,
)
from zeroseg.platform.store.schema import SCHEMA_VERSION
from zeroseg.platform.store.store import (
    DEFAULT_PATH,
    ENV_VAR,
    EXPORT_COLUMNS,
    Store,
    open_store,
    open_writable_store,
    resolve_url,
)

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "EXPORT_COLUMNS",
    "PRIMARY_METRIC",
    "SCHEMA_VERSION",
    "CurveRecord",
    "MetricRecord",
    "RunRecord",
    "Store",
    "StoreError",
    "code_version",
    "dataset_folder_fingerprint",
    "metrics_from_eval",
    "open_store",
    "open_writable_store",
    "resolve_url",
    "run_key",
    "trial_uid",
]
