"""The results store: every run, its metrics and curves, in SQLite (default) or PostgreSQL.

Open one with :func:`open_store`: no argument means ``$ZEROSEG_STORE`` or the SQLite file
``.zeroseg/results.db``; a plain path is a SQLite file; ``sqlite:///...`` and
``postgresql+psycopg://user@host:port/db`` URLs are used as given (``postgresql://`` gets the
psycopg driver).

Transactions and concurrency
----------------------------
Every write is one transaction: :meth:`Store.record_run` writes the run, its metric rows and
curve points together or not at all. Many processes may write at once:

- SQLite runs in WAL mode (readers never block the writer) with a busy timeout; a write
  transaction starts with ``BEGIN IMMEDIATE``, so writers queue for the lock up front instead of
  failing when a read lock must be upgraded, and a write that still meets "database is locked"
  is retried from the start with jittered backoff (the transaction either committed or left
  nothing, so a retry is safe);
- PostgreSQL writes run at READ COMMITTED; serialization failures and deadlocks are retried the
  same way; per-run updates lock the run's row; schema creation and migration hold an advisory
  lock;
- a run carries a client-generated ``uid`` (unique in the table): writing the same record again
  — a retry after a lost reply, a trial reporting twice — returns the first run's id and
  writes nothing. Sweeps rely on that: completed trials are neither lost nor duplicated.

Opening a store checks what it is, with one distinct one-line :class:`StoreError` each:

- ``store X: not found`` -- a SQLite file that does not exist, opened by a reader
  (``create=False`` / ``read_only``; nothing is created);
- ``store X: not a zeroseg results store (...)`` -- not a SQLite file, a folder, an empty
  database opened by a reader, or another application's database (tables, but no
  ``schema_version``); writers refuse it too rather than add tables to it;
- ``store X: schema version N, this zeroseg reads M; ...`` -- older (run ``zeroseg results
  migrate``) or newer (upgrade zeroseg).

Writers create a missing store. :meth:`Store.probe_write` checks, with a write that changes
nothing, that a store opened for writing can really be written (permissions, a read-only
file system, a server that refuses) -- the commands call it before their first expensive stage.

Run identity: a record with a ``run_key`` (see :mod:`.schema`) is stored once as a finished
run; :meth:`Store.record_run` reuses the stored one (or replaces it with ``replace=True``) and
removes earlier unfinished attempts of the same run; :meth:`Store.finished_run` finds it before
a run is started.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from zeroseg.platform.io import atomic_write_text
from zeroseg.platform.store import migrations, schema
from zeroseg.platform.store.records import (
    PRIMARY_METRIC,
    CurveRecord,
    MetricRecord,
    RunRecord,
    StoreError,
    evaluation_info,
    metrics_from_eval,
    utcnow,
)
from zeroseg.platform.store.schema import (
    STATUSES,
    SWEEP_STATUSES,
    TABLES,
    Base,
    CurvePoint,
    Metric,
    Run,
    SchemaVersion,
    Sweep,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_VAR = "ZEROSEG_STORE"
DEFAULT_PATH = Path(".zeroseg") / "results.db"
BUSY_TIMEOUT_S = 30.0  # how long one SQLite statement waits for the lock
RETRY_FOR_S = 300.0  # how long a write keeps retrying transient lock errors in all
_ADVISORY_LOCK = 0x7A65_726F  # PostgreSQL advisory lock key for schema changes ("zero")

#: Run columns in table / CSV order (``config``, audit, artifacts and evaluations are JSON).
RUN_COLUMNS = ("id", "uid", "name", "kind", "status", "method", "dataset", "split", "embedding",
               "backbone", "tasks", "seed", "config_hash", "code_version", "code_dirty",
               "dataset_fingerprint", "sweep", "trial_id", "source_run_id", "host",
               "created_at", "updated_at", "finished_at", "duration_s", "error", "run_key",
               "superseded_by")
JSON_COLUMNS = ("config", "leakage_audit", "artifacts", "evaluations")
METRIC_COLUMNS = ("task", "setting", "eval_split", "subset", "class_name", "metric", "value")
#: Run columns repeated on every exported metric row.
EXPORT_RUN_COLUMNS = ("run_id", "run_uid", "name", "kind", "status", "method", "dataset",
                      "split", "embedding", "backbone", "seed", "config_hash", "code_version",
                      "sweep", "trial_id", "source_run_id", "created_at")
EXPORT_COLUMNS = EXPORT_RUN_COLUMNS + METRIC_COLUMNS

_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")
_PG_TRANSIENT = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


# -- opening ------------------------------------------------------------------------------------
def resolve_url(url_or_path: str | os.PathLike | None = None) -> URL:
    """The SQLAlchemy URL of a store: an URL as given, a plain path as a SQLite file."""
    value = str(url_or_path) if url_or_path not in (None, "") else (
        os.environ.get(ENV_VAR) or str(DEFAULT_PATH))
    if "://" not in value:
        return URL.create("sqlite", database=str(Path(value).expanduser().absolute()))
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(f"store URL {value!r}: not a database URL (expected sqlite:///PATH, "
                         "postgresql+psycopg://USER@HOST:PORT/DB or a file path)") from None
    if url.drivername in ("postgresql", "postgres"):  # psycopg (3) is the driver installed
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"store URL {url.render_as_string(hide_password=True)}: unsupported "
                         f"database {backend!r} (expected sqlite or postgresql)")
    return url


def open_store(url_or_path: str | os.PathLike | None = None, *, create: bool = True,
               read_only: bool = False) -> Store:
    """Open (and with ``create``, create) the results store at ``url_or_path``.

    ``read_only``: never write (SQLite ``query_only``, PostgreSQL read-only transactions) and
    never create anything; a store that does not exist opens as an empty store.
    """
    return Store(resolve_url(url_or_path), create=create and not read_only, read_only=read_only)


def open_writable_store(url_or_path: str | os.PathLike | None = None) -> Store:
    """Open (creating it when missing) a store that is about to be written, check its schema
    version and probe a write (:meth:`Store.probe_write`): what every command that stores runs
    does before its first expensive stage, so a mistyped URL, another application's database,
    an older schema or a read-only file is a one-line error then, not after training."""
    store = open_store(url_or_path)
    try:
        store.probe_write()
    except BaseException:
        store.close()
        raise
    return store


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetimes in, aware UTC out; naive values (SQLite) are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _is_transient(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_TRANSIENT:
        return True
    message = str(orig or exc).lower()
    return any(m in message for m in _SQLITE_TRANSIENT)


class Store:
    """A results store. Create with :func:`open_store`; safe to use from many processes (each
    opens its own); not to be shared between threads without care (one transaction each)."""

    def __init__(self, url: URL, *, create: bool = True, read_only: bool = False,
                 check_version: bool = True):
        self.url = url
        self.read_only = read_only
        self.dialect = url.get_backend_name()
        self.display = (url.database or ":memory:") if self.dialect == "sqlite" else \
            url.render_as_string(hide_password=True)
        self._pid = os.getpid()
        self._version: int | None = None
        self.engine: Engine | None = None
        memory = self.dialect == "sqlite" and url.database in (None, "", ":memory:")
        if self.dialect == "sqlite" and not memory:
            path = Path(url.database or "")
            if path.is_dir():
                raise StoreError(f"store {path}: not a zeroseg results store (a folder; "
                                 "expected a SQLite file)")
            if not path.exists():
                if not create:
                    raise StoreError(f"store {path}: not found")
                if path.parent.exists() and not path.parent.is_dir():
                    raise StoreError(f"store {path}: cannot be created ({path.parent} is a "
                                     "file, not a folder)")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StoreError(f"store {path}: cannot create its folder "
                                     f"({e.strerror or e})") from None
        self.engine = self._make_engine(memory)
        self._open(create, check_version)

    # -- engine -------------------------------------------------------------------------------
    def _make_engine(self, memory: bool) -> Engine:
        kwargs: dict[str, Any] = {
            "json_serializer": lambda obj: json.dumps(obj, allow_nan=False, ensure_ascii=False)}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
            if memory:
                kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_pre_ping"] = True
            if self.read_only:
                kwargs["connect_args"] = {
                    "options": "-c default_transaction_read_only=on"}
        try:
            engine = create_engine(self.url, **kwargs)
        except (NoSuchModuleError, ModuleNotFoundError) as e:
            raise StoreError(f"store {self.display}: database driver not installed ({e}); "
                             "for PostgreSQL install psycopg[binary]") from None
        if self.dialect == "sqlite":
            read_only = self.read_only

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # transactions are begun explicitly below
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                cur.execute("PRAGMA foreign_keys = ON")
                if read_only:
                    cur.execute("PRAGMA query_only = ON")
                elif not memory:
                    cur.execute("PRAGMA journal_mode = WAL")
                    cur.execute("PRAGMA synchronous = NORMAL")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                write = conn.get_execution_options().get("zeroseg_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
        return engine

    def _engine(self) -> Engine:
        assert self.engine is not None
        if os.getpid() != self._pid:  # a forked child: never reuse the parent's connections
            self.engine.dispose(close=False)
            self._pid = os.getpid()
        return self.engine

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. into a Ray worker) as "open the same store again".
        return (_reopen, (self.url.render_as_string(hide_password=False), self.read_only))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.display!r})"

    # -- transactions -------------------------------------------------------------------------
    def _write(self, body: Callable[[Connection], T], what: str, *,
               raise_integrity: bool = False) -> T:
        """Run ``body`` in one write transaction, retrying transient lock errors. A constraint
        violation is a :class:`StoreError` (or re-raised as is with ``raise_integrity``)."""
        if self.read_only:
            raise StoreError(f"store {self.display}: opened read-only, cannot {what}")
        if self.engine is None:
            raise StoreError(f"store {self.display}: does not exist (open it with create=True)")
        delay, deadline, attempt = 0.02, time.monotonic() + RETRY_FOR_S, 0
        while True:
            attempt += 1
            try:
                with self._engine().connect() as conn:
                    conn.execution_options(zeroseg_write=True)
                    with conn.begin():
                        return body(conn)
            except IntegrityError as e:
                if raise_integrity:
                    raise
                raise StoreError(f"store {self.display}: cannot {what} "
                                 f"({_first_line(e)})") from None
            except DBAPIError as e:
                if not _is_transient(e) or time.monotonic() > deadline:
                    raise StoreError(f"store {self.display}: cannot {what} "
                                     f"({_first_line(e)})") from None
                log.debug("store %s: %s, retry %d of %s", self.display, _first_line(e),
                          attempt, what)
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        assert self.engine is not None
        try:
            with self._engine().connect() as conn:
                yield conn
        except DBAPIError as e:
            raise StoreError(f"store {self.display}: cannot read ({_first_line(e)})") from None

    # -- schema -------------------------------------------------------------------------------
    def _stored_version(self, conn: Connection) -> int | None:
        """The store's schema version; ``None`` for a database without any table (a new one);
        a database with tables but no ``schema_version`` is not a zeroseg store."""
        tables = set(inspect(conn).get_table_names())
        if "schema_version" not in tables:
            if tables:
                ours = sorted(tables & set(TABLES))
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                detail = (f"tables {', '.join(ours)} but no schema_version table" if ours
                          else f"it holds another application's tables: {shown}")
                raise StoreError(f"store {self.display}: not a zeroseg results store "
                                 f"({detail})")
            return None
        version = conn.scalar(select(func.max(SchemaVersion.version)))
        if version is None:
            raise StoreError(f"store {self.display}: not a zeroseg results store (its "
                             "schema_version table is empty)")
        return int(version)

    def _open(self, create: bool, check_version: bool) -> None:
        try:
            with self._read() as conn:
                version = self._stored_version(conn)
        except StoreError as e:
            if "file is not a database" in str(e):
                raise StoreError(f"store {self.display}: not a zeroseg results store (not a "
                                 "SQLite database)") from None
            if "unable to open database file" in str(e):  # WAL needs its -shm file beside it
                raise StoreError(f"store {self.display}: cannot open (unable to open the "
                                 "database file; its folder must be writable)") from None
            raise
        if version is None and create:
            version = self._write(self._create_schema, "create the schema")
        if version is None:
            raise StoreError(f"store {self.display}: not a zeroseg results store (an empty "
                             "database: no tables)")
        self._version = version
        if check_version:
            self.check_version()

    def probe_write(self) -> None:
        """Check that this store can be written: a write transaction that rewrites the newest
        ``schema_version`` row with its own values (nothing changes) and commits. A read-only
        file or folder, a full disk or a server that refuses writes is a one-line
        :class:`StoreError` here, before any expensive work."""
        def body(conn: Connection) -> None:
            newest = select(func.max(SchemaVersion.version)).scalar_subquery()
            conn.execute(update(SchemaVersion).where(SchemaVersion.version == newest)
                         .values(note=SchemaVersion.note))

        self._write(body, "write (probe)")

    def _lock_schema(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK)))

    def _create_schema(self, conn: Connection) -> int:
        self._lock_schema(conn)
        version = self._stored_version(conn)  # another process may have been first
        if version is not None:
            return version
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaVersion).values(
            version=schema.SCHEMA_VERSION, applied_at=utcnow(), zeroseg_version=_package_version(),
            note="created"))
        log.info("results store %s: created (schema v%d)", self.display, schema.SCHEMA_VERSION)
        return schema.SCHEMA_VERSION

    def check_version(self) -> None:
        """Raise a one-line :class:`StoreError` unless the store has this code's schema."""
        v = self._version
        if v is None or v == schema.SCHEMA_VERSION:
            return
        if v < schema.SCHEMA_VERSION:
            raise StoreError(f"store {self.display}: schema version {v}, this zeroseg reads "
                             f"{schema.SCHEMA_VERSION}; run `zeroseg results migrate --store "
                             f"{self.display}`")
        raise StoreError(f"store {self.display}: schema version {v}, this zeroseg reads "
                         f"{schema.SCHEMA_VERSION} (the store is newer); upgrade zeroseg to "
                         "read it")

    @property
    def schema_version(self) -> int | None:
        """The store's schema version (``None`` for a store that does not exist yet)."""
        return self._version

    def migrate(self) -> list[int]:
        """Upgrade the schema to this code's version in one transaction; returns the versions
        applied (``[]`` when already current)."""

        def body(conn: Connection) -> list[int]:
            self._lock_schema(conn)
            current = self._stored_version(conn)
            if current is None:
                return []
            if current > schema.SCHEMA_VERSION:
                self._version = current
                self.check_version()
            try:
                done = migrations.apply_migrations(conn, current, schema.SCHEMA_VERSION)
            except KeyError as e:
                raise StoreError(f"store {self.display} has schema v{current}; this zeroseg "
                                 f"has no migration from v{e.args[0]} to v{e.args[0] + 1}"
                                 ) from None
            for v in done:
                conn.execute(insert(SchemaVersion).values(
                    version=v, applied_at=utcnow(), zeroseg_version=_package_version(),
                    note=f"migrated from v{v - 1}"))
            return done

        done = self._write(body, "migrate the schema")
        with self._read() as conn:
            self._version = self._stored_version(conn)
        return done

    # -- writes -------------------------------------------------------------------------------
    def record_run(self, run: RunRecord, *, replace: bool = False) -> int:
        """Write ``run`` with its metrics and curves in one transaction; return its id.

        Idempotent by ``run.uid``: a second write of the same uid returns the first id and
        changes nothing. With a ``run.run_key``, a finished run of that key is stored once:
        when one is stored already, its id is returned and nothing is written, unless
        ``replace`` (``--force``): then it is deleted and ``run`` takes its place, in the same
        transaction. Unfinished attempts with the key (failed, stopped, running) are removed
        when the next attempt is written. Two processes writing the same finished run at once
        end with one row: the partial unique index refuses the second insert, which then
        returns the first one's id.
        """
        self.check_version()
        rec = run.checked()
        if not rec.leakage_audit and rec.kind != "eval":
            log.warning("run %s (%s): no leakage audit recorded", rec.uid, rec.kind)
        now = utcnow()

        def body(conn: Connection) -> int:
            existing = conn.scalar(select(Run.id).where(Run.uid == rec.uid))
            if existing is not None:
                log.info("run %s already stored as %d; nothing written", rec.uid, existing)
                return int(existing)
            if rec.run_key is not None:
                same = conn.execute(select(Run.id, Run.status).where(
                    Run.run_key == rec.run_key)).all()
                finished = [int(r.id) for r in same if r.status == "finished"]
                if finished and not replace and rec.status == "finished":
                    log.info("run %s already stored as %d; nothing written", rec.run_key,
                             finished[0])
                    return finished[0]
                stale = [int(r.id) for r in same if r.status != "finished" or (
                    replace and rec.status == "finished")]
                if stale:
                    conn.execute(delete(Run).where(Run.id.in_(stale)))
            if rec.source_run_id is not None and conn.scalar(
                    select(Run.id).where(Run.id == rec.source_run_id)) is None:
                raise StoreError(f"run.source_run_id: no run {rec.source_run_id} in store "
                                 f"{self.display}")
            if rec.sweep and rec.trial_id is not None:
                other = conn.scalar(select(Run.id).where(Run.sweep == rec.sweep,
                                                         Run.trial_id == rec.trial_id))
                if other is not None:
                    raise StoreError(f"run.trial_id: trial {rec.trial_id!r} of sweep "
                                     f"{rec.sweep!r} is already run {other} (with another uid; "
                                     "use records.trial_uid(sweep, trial_id) as the uid)")
            if rec.sweep:
                self._ensure_sweep(conn, rec.sweep, now)
            values = {
                "uid": rec.uid, "run_key": rec.run_key, "name": rec.name, "kind": rec.kind,
                "status": rec.status,
                "method": rec.method, "dataset": rec.dataset, "split": rec.split,
                "embedding": rec.embedding, "backbone": rec.backbone,
                "tasks": ",".join(rec.tasks) or None, "seed": rec.seed, "config": rec.config,
                "config_hash": rec.config_hash, "code_version": rec.code_version,
                "code_dirty": rec.code_dirty, "dataset_fingerprint": rec.dataset_fingerprint,
                "leakage_audit": rec.leakage_audit, "artifacts": rec.artifacts,
                "evaluations": rec.evaluations, "sweep": rec.sweep, "trial_id": rec.trial_id,
                "source_run_id": rec.source_run_id, "host": rec.host,
                "created_at": _utc(rec.created_at), "updated_at": now,
                "finished_at": _utc(rec.finished_at), "duration_s": rec.duration_s,
                "error": rec.error,
            }
            run_id = int(conn.execute(insert(Run).values(**values)).inserted_primary_key[0])
            self._insert_metrics(conn, run_id, rec.metrics)
            self._insert_curves(conn, run_id, rec.curves)
            return run_id

        try:
            return self._write(body, f"record run {rec.uid}", raise_integrity=True)
        except IntegrityError as e:
            # Two writers raced with the same uid or the same finished run: the other one won.
            existing = self._run_id_by_uid(rec.uid)
            if existing is None and rec.run_key is not None and rec.status == "finished":
                found = self.finished_run(rec.run_key)
                existing = None if found is None else int(found["id"])
            if existing is not None:
                return existing
            raise StoreError(f"store {self.display}: cannot record run {rec.uid} "
                             f"({_first_line(e)})") from None

    def finished_run(self, run_key: str) -> dict[str, Any] | None:
        """The finished run stored under ``run_key`` (columns as in :meth:`runs`), if any."""
        self.check_version()
        query = select(*[getattr(Run, c) for c in RUN_COLUMNS]).where(
            Run.run_key == run_key, Run.status == "finished")
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _run_dict(row._mapping)

    def _run_id_by_uid(self, uid: str) -> int | None:
        with self._read() as conn:
            found = conn.scalar(select(Run.id).where(Run.uid == uid))
        return None if found is None else int(found)

    def _ensure_sweep(self, conn: Connection, name: str, now: datetime) -> None:
        ins = _dialect_insert(self.dialect)(Sweep).values(name=name, status="running",
                                                          created_at=now)
        conn.execute(ins.on_conflict_do_nothing(index_elements=["name"]))

    @staticmethod
    def _insert_metrics(conn: Connection, run_id: int, rows: Sequence[MetricRecord]) -> None:
        if rows:
            conn.execute(insert(Metric), [{"run_id": run_id, **m.to_dict()} for m in rows])

    @staticmethod
    def _insert_curves(conn: Connection, run_id: int, points: Sequence[CurveRecord]) -> None:
        if points:
            conn.execute(insert(CurvePoint), [
                {"run_id": run_id, "name": p.name, "step": p.step, "value": p.value,
                 "recorded_at": _utc(p.recorded_at)} for p in points])

    def _lock_run(self, conn: Connection, run_id: int) -> None:
        found = conn.scalar(select(Run.id).where(Run.id == run_id).with_for_update())
        if found is None:
            raise StoreError(f"store {self.display}: no run {run_id}")

    def add_metrics(self, run_id: int, rows: Iterable[MetricRecord]) -> int:
        """Add metric rows to a stored run (one transaction); a row with the same task /
        setting / eval_split / subset / class / metric as a stored one replaces it. Returns the
        number of rows written."""
        self.check_version()
        checked = [m.checked(f"metrics[{i}]") for i, m in enumerate(rows)]
        latest: dict[tuple[Any, ...], MetricRecord] = {m.key: m for m in checked}
        new = list(latest.values())

        def body(conn: Connection) -> int:
            self._lock_run(conn, run_id)
            groups: dict[tuple[str, ...], set[str | None]] = {}
            for m in new:
                groups.setdefault((m.task, m.setting, m.eval_split, m.subset, m.metric),
                                  set()).add(m.class_name)
            for (task, setting, eval_split, subset, metric), names in groups.items():
                where = [Metric.run_id == run_id, Metric.task == task,
                         Metric.setting == setting, Metric.eval_split == eval_split,
                         Metric.subset == subset, Metric.metric == metric]
                named = sorted(n for n in names if n is not None)
                match = []
                if None in names:
                    match.append(Metric.class_name.is_(None))
                if named:
                    match.append(Metric.class_name.in_(named))
                conn.execute(delete(Metric).where(and_(*where), or_(*match)))
            self._insert_metrics(conn, run_id, new)
            tasks = set(filter(None, (conn.scalar(select(Run.tasks).where(Run.id == run_id))
                                      or "").split(",")))
            conn.execute(update(Run).where(Run.id == run_id).values(
                tasks=",".join(sorted(tasks | {m.task for m in new})) or None,
                updated_at=utcnow()))
            return len(new)

        return self._write(body, f"add metrics to run {run_id}")

    def add_evaluation(self, run_id: int, result: Mapping[str, Any], eval_split: str, *,
                       per_class: bool = True) -> int:
        """Add one ``EvalResult.to_json()`` to a stored run (rows replace earlier ones of the
        same evaluation; the run's ``evaluations`` gains its description)."""
        rows = metrics_from_eval(result, eval_split, per_class=per_class)
        n = self.add_metrics(run_id, rows)
        key = f"{result['task']}/{result['setting']}/{eval_split}"
        info = evaluation_info(result)

        def body(conn: Connection) -> None:
            self._lock_run(conn, run_id)
            evaluations = dict(conn.scalar(select(Run.evaluations).where(Run.id == run_id))
                               or {})
            evaluations[key] = info
            conn.execute(update(Run).where(Run.id == run_id).values(evaluations=evaluations))

        self._write(body, f"add evaluation to run {run_id}")
        return n

    def add_curve_points(self, run_id: int,
                         points: Iterable[CurveRecord | tuple[str, int, float | None]]) -> int:
        """Add curve points to a stored run (a point at an existing name and step replaces
        it); also marks the run as updated (a live trial's heartbeat). Returns the count."""
        self.check_version()
        recs = [p if isinstance(p, CurveRecord) else CurveRecord(*p) for p in points]
        checked = {(c.name, c.step): c for c in
                   (r.checked(f"curves[{i}]") for i, r in enumerate(recs))}
        new = list(checked.values())

        def body(conn: Connection) -> int:
            self._lock_run(conn, run_id)
            if new:
                ins = _dialect_insert(self.dialect)(CurvePoint)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=["run_id", "name", "step"],
                    set_={"value": ins.excluded.value, "recorded_at": ins.excluded.recorded_at}),
                    [{"run_id": run_id, "name": c.name, "step": c.step, "value": c.value,
                      "recorded_at": _utc(c.recorded_at)} for c in new])
            conn.execute(update(Run).where(Run.id == run_id).values(updated_at=utcnow()))
            return len(new)

        return self._write(body, f"add curve points to run {run_id}")

    def complete_run(self, run_id: int, run: RunRecord) -> None:
        """Finish a stored run (a sweep trial written as ``running`` when it started) from a
        full record, in one transaction: status, duration, error, config, leakage audit,
        artifacts, evaluations and metric rows are replaced by the record's, its curve points
        are upserted. Idempotent: completing twice with the same record changes nothing more.
        ``run.uid`` must be the stored run's uid (a record of another run is refused)."""
        self.check_version()
        rec = run.checked()
        now = utcnow()

        def body(conn: Connection) -> None:
            self._lock_run(conn, run_id)
            uid = conn.scalar(select(Run.uid).where(Run.id == run_id))
            if uid != rec.uid:
                raise StoreError(f"run.uid: record {rec.uid} does not belong to run {run_id} "
                                 f"(uid {uid})")
            conn.execute(update(Run).where(Run.id == run_id).values(
                status=rec.status, config=rec.config, config_hash=rec.config_hash,
                leakage_audit=rec.leakage_audit, artifacts=rec.artifacts,
                evaluations=rec.evaluations, tasks=",".join(rec.tasks) or None,
                dataset_fingerprint=rec.dataset_fingerprint, duration_s=rec.duration_s,
                error=rec.error, host=rec.host, updated_at=now,
                finished_at=_utc(rec.finished_at) if rec.status != "running" else None))
            conn.execute(delete(Metric).where(Metric.run_id == run_id))
            self._insert_metrics(conn, run_id, rec.metrics)
            if rec.curves:
                ins = _dialect_insert(self.dialect)(CurvePoint)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=["run_id", "name", "step"],
                    set_={"value": ins.excluded.value, "recorded_at": ins.excluded.recorded_at}),
                    [{"run_id": run_id, "name": c.name, "step": c.step, "value": c.value,
                      "recorded_at": _utc(c.recorded_at)} for c in rec.curves])

        self._write(body, f"complete run {run_id}")

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metric rows and curve points (a sweep trial its driver lost
        while it ran: the resumed sweep runs it again)."""
        self.check_version()
        self._write(lambda conn: conn.execute(delete(Run).where(Run.id == run_id)),
                    f"delete run {run_id}")

    def update_status(self, run_id: int, status: str, *, error: str | None = None,
                      finished_at: datetime | None = None, duration_s: float | None = None,
                      artifacts: Mapping[str, Any] | None = None) -> None:
        """Set a run's status (``running`` / ``finished`` / ``failed`` / ``stopped``); a final
        status sets ``finished_at`` (now unless given); ``artifacts`` are merged in."""
        self.check_version()
        if status not in STATUSES:
            raise StoreError(f"status: {status!r} is not one of {', '.join(STATUSES)}")

        def body(conn: Connection) -> None:
            self._lock_run(conn, run_id)
            now = utcnow()
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if status != "running":
                values["finished_at"] = _utc(finished_at) or now
            if error is not None:
                values["error"] = error
            if duration_s is not None:
                values["duration_s"] = float(duration_s)
            if artifacts:
                stored = conn.scalar(select(Run.artifacts).where(Run.id == run_id)) or {}
                values["artifacts"] = {**stored, **dict(artifacts)}
            conn.execute(update(Run).where(Run.id == run_id).values(**values))

        self._write(body, f"update the status of run {run_id}")

    def upsert_sweep(self, name: str, *, method: str | None = None,
                     space: Mapping[str, Any] | None = None, objective: str | None = None,
                     mode: str | None = None, settings: Mapping[str, Any] | None = None,
                     status: str | None = None) -> int:
        """Create sweep ``name`` or update the given fields of it; returns its id."""
        self.check_version()
        if status is not None and status not in SWEEP_STATUSES:
            raise StoreError(f"sweep.status: {status!r} is not one of "
                             f"{', '.join(SWEEP_STATUSES)}")
        if mode is not None and mode not in ("max", "min"):
            raise StoreError(f"sweep.mode: {mode!r} is not one of max, min")
        fields = {k: v for k, v in {
            "method": method, "space": dict(space) if space is not None else None,
            "objective": objective, "mode": mode,
            "settings": dict(settings) if settings is not None else None,
            "status": status}.items() if v is not None}
        if status is not None and status != "running":
            fields["finished_at"] = utcnow()

        def body(conn: Connection) -> int:
            self._ensure_sweep(conn, name, utcnow())
            if fields:
                conn.execute(update(Sweep).where(Sweep.name == name).values(**fields))
            return int(conn.scalar(select(Sweep.id).where(Sweep.name == name)))

        return self._write(body, f"write sweep {name!r}")

    # -- reads --------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        """True when the store holds no run."""
        return self.count_runs() == 0

    def count_runs(self) -> int:
        self.check_version()
        with self._read() as conn:
            return int(conn.scalar(select(func.count()).select_from(Run)) or 0)

    def _run_filters(self, *, ids: Iterable[int] | None = None, method: str | None = None,
                     dataset: str | None = None, split: str | None = None,
                     kind: str | None = None, status: str | None = None,
                     sweep: str | None = None, task: str | None = None,
                     config_hash: str | None = None, superseded: bool = False) -> list[Any]:
        where: list[Any] = [] if superseded else [Run.superseded_by.is_(None)]
        if ids is not None:
            where.append(Run.id.in_(list(ids)))
        for column, value in ((Run.method, method), (Run.dataset, dataset),
                              (Run.split, split), (Run.kind, kind), (Run.status, status),
                              (Run.sweep, sweep), (Run.config_hash, config_hash)):
            if value is not None:
                where.append(column == value)
        if task is not None:
            where.append(Run.tasks.contains(task))
        return where

    def runs(self, *, limit: int | None = None, offset: int = 0, full: bool = False,
             newest_first: bool = True, **filters: Any) -> list[dict[str, Any]]:
        """Runs matching ``filters`` (``ids``, ``method``, ``dataset``, ``split``, ``kind``,
        ``status``, ``sweep``, ``task``, ``config_hash``; ``superseded=True`` includes the older
        copies a v1 store had, see :mod:`.schema`), newest first. Without ``full`` the
        JSON columns (config, audit, artifacts, evaluations) are left out, so listing thousands
        of runs stays cheap."""
        self.check_version()
        columns = [getattr(Run, c) for c in RUN_COLUMNS]
        if full:
            columns += [getattr(Run, c) for c in JSON_COLUMNS]
        order = Run.id.desc() if newest_first else Run.id.asc()
        query = select(*columns).where(*self._run_filters(**filters)).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self._read() as conn:
            return [_run_dict(row._mapping) for row in conn.execute(query)]

    def resolve_run(self, ref: int | str) -> int:
        """A run id from an id (``17``) or a uid or unique uid prefix (at least 4 characters)."""
        self.check_version()
        text_ref = str(ref).strip()
        with self._read() as conn:
            if text_ref.isdigit():
                found = conn.scalar(select(Run.id).where(Run.id == int(text_ref)))
                if found is not None:
                    return int(found)
            if len(text_ref) >= 4:
                ids = conn.scalars(select(Run.id).where(
                    Run.uid.startswith(text_ref, autoescape=True)).limit(2)).all()
                if len(ids) == 1:
                    return int(ids[0])
                if len(ids) > 1:
                    raise StoreError(f"run {text_ref!r}: ambiguous uid prefix in store "
                                     f"{self.display}; give more characters or the id")
        raise StoreError(f"run {text_ref!r}: not in store {self.display} "
                         "(see `zeroseg results list`)")

    def run(self, ref: int | str) -> dict[str, Any]:
        """Everything about one run: its columns, JSON fields, metric rows and curve points."""
        run_id = self.resolve_run(ref)
        with self._read() as conn:
            row = conn.execute(select(*[getattr(Run, c) for c in RUN_COLUMNS + JSON_COLUMNS])
                               .where(Run.id == run_id)).one()
            out = _run_dict(row._mapping)
            out["metrics"] = [dict(r._mapping) for r in conn.execute(
                select(*[getattr(Metric, c) for c in METRIC_COLUMNS])
                .where(Metric.run_id == run_id).order_by(Metric.id))]
            out["curves"] = [{"name": r.name, "step": r.step, "value": r.value,
                              "recorded_at": _utc(r.recorded_at)} for r in conn.execute(
                select(CurvePoint.name, CurvePoint.step, CurvePoint.value,
                       CurvePoint.recorded_at)
                .where(CurvePoint.run_id == run_id)
                .order_by(CurvePoint.name, CurvePoint.step))]
        return out

    def metrics_frame(self, *, per_class: bool = True, setting: str | None = None,
                      eval_split: str | None = None, subset: str | None = None,
                      metric: str | None = None, metric_task: str | None = None,
                      **filters: Any) -> list[dict[str, Any]]:
        """Long-format rows, one per run x task x setting x eval split x subset x (class) x
        metric, each with the run's columns (:data:`EXPORT_COLUMNS`). Run filters as in
        :meth:`runs`; ``metric_task`` / ``setting`` / ``eval_split`` / ``subset`` / ``metric``
        select rows; ``per_class=False`` keeps only the seen / unseen / HM rows."""
        self.check_version()
        run_where = self._run_filters(**filters)
        where = list(run_where)
        for column, value in ((Metric.task, metric_task), (Metric.setting, setting),
                              (Metric.eval_split, eval_split), (Metric.subset, subset),
                              (Metric.metric, metric)):
            if value is not None:
                where.append(column == value)
        if not per_class:
            where.append(Metric.subset != "class")
        # Run columns are read once per run and shared by its rows (a store of 10,000 runs
        # holds millions of metric rows: no per-row datetime parsing or join payload).
        run_query = select(Run.id, Run.uid, *[getattr(Run, c) for c in EXPORT_RUN_COLUMNS[2:]])
        if run_where:
            run_query = run_query.where(*run_where)
        metric_query = select(Metric.run_id, *[getattr(Metric, c) for c in METRIC_COLUMNS])
        if run_where:
            metric_query = metric_query.join(Run, Metric.run_id == Run.id)
        metric_query = metric_query.where(*where).order_by(Metric.run_id, Metric.id)
        with self._read() as conn:
            runs: dict[int, dict[str, Any]] = {}
            for r in conn.execute(run_query):
                d = dict(zip(EXPORT_RUN_COLUMNS, r, strict=True))
                d["created_at"] = _utc(d["created_at"])
                runs[d["run_id"]] = d
            rows = [{**runs[r[0]], **dict(zip(METRIC_COLUMNS, r[1:], strict=True))}
                    for r in conn.execute(metric_query)]
        return rows

    def primary_metrics(self, run_ids: Sequence[int], *, setting: str = "gzsl",
                        eval_split: str | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        """run id -> task -> ``{"metric", "eval_split", "seen", "unseen", "hm"}`` for each
        task's primary metric (:data:`PRIMARY_METRIC`). ``eval_split=None`` prefers ``test``
        and falls back to ``val``."""
        if not run_ids:
            return {}
        self.check_version()
        pairs = or_(*[and_(Metric.task == t, Metric.metric == m)
                      for t, m in PRIMARY_METRIC.items()])
        where = [Metric.setting == setting,
                 Metric.subset.in_(("seen", "unseen", "hm")), pairs]
        if eval_split is not None:
            where.append(Metric.eval_split == eval_split)
        found: dict[tuple[int, str, str], dict[str, Any]] = {}
        wanted = set(run_ids)
        if len(wanted) <= 500:
            where.append(Metric.run_id.in_(sorted(wanted)))
        # else: scan the primary rows of every run (index on task, metric, subset) and keep the
        # wanted ones here; a long IN list is slower and hits SQLite's variable limit.
        query = select(Metric.run_id, Metric.task, Metric.eval_split, Metric.subset,
                       Metric.metric, Metric.value).where(*where)
        with self._read() as conn:
            for r in conn.execute(query):
                if r.run_id not in wanted:
                    continue
                entry = found.setdefault((r.run_id, r.task, r.eval_split),
                                         {"metric": r.metric, "eval_split": r.eval_split})
                entry[r.subset] = r.value
        out: dict[int, dict[str, dict[str, Any]]] = {}
        # Validation entries first, test entries after them: where both exist, test wins.
        for (run_id, task, _split), entry in sorted(found.items(),
                                                    key=lambda kv: kv[0][2] == "test"):
            out.setdefault(run_id, {})[task] = entry
        return out

    def curves(self, run_id: int, name: str | None = None) -> list[dict[str, Any]]:
        """Curve points of a run (optionally one curve), by name then step."""
        self.check_version()
        query = select(CurvePoint.name, CurvePoint.step, CurvePoint.value).where(
            CurvePoint.run_id == run_id)
        if name is not None:
            query = query.where(CurvePoint.name == name)
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(
                query.order_by(CurvePoint.name, CurvePoint.step))]

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep with its number of trials, newest first."""
        self.check_version()
        trials = (select(Run.sweep, func.count().label("trials")).where(Run.sweep.is_not(None))
                  .group_by(Run.sweep).subquery())
        query = (select(Sweep, func.coalesce(trials.c.trials, 0).label("trials"))
                 .outerjoin(trials, trials.c.sweep == Sweep.name).order_by(Sweep.id.desc()))
        with self._read() as conn:
            out = []
            for r in conn.execute(query):
                d = dict(r._mapping)
                d["created_at"], d["finished_at"] = _utc(d["created_at"]), _utc(
                    d["finished_at"])
                out.append(d)
            return out

    def export_csv(self, path: str | os.PathLike, **filters: Any) -> int:
        """Write :meth:`metrics_frame` rows (same filters) to a CSV file atomically; returns
        the number of rows. Values are written exactly (``repr`` of the float)."""
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path}: is a folder (expected a CSV file path)")
        rows = self.metrics_frame(**filters)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in EXPORT_COLUMNS])
        try:
            atomic_write_text(path, buf.getvalue())
        except OSError as e:
            raise StoreError(f"{path}: cannot write the CSV ({e.strerror or e})") from None
        return len(rows)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _run_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(mapping)
    for key in ("created_at", "updated_at", "finished_at"):
        if key in d:
            d[key] = _utc(d[key])
    d["tasks"] = [t for t in (d.get("tasks") or "").split(",") if t]
    return d


def _dialect_insert(dialect: str) -> Callable[..., Any]:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zeroseg")
    except PackageNotFoundError:
        return "unknown"


def _reopen(url: str, read_only: bool) -> Store:
    return open_store(url, read_only=read_only)
