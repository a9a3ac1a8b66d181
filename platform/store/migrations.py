"""Schema migrations of the results store, one hand-written step per version.

``MIGRATIONS[v]`` upgrades a store from schema ``v`` to ``v + 1``. A step receives an Alembic
:class:`~alembic.operations.Operations` bound to the open transaction (``op.add_column``,
``op.create_index``, ...; on SQLite use ``op.batch_alter_table`` for what SQLite cannot alter in
place) and the raw connection. :func:`apply_migrations` runs the missing steps in one
transaction, so a store is either fully upgraded or left as it was.

When the tables change, bump ``schema.SCHEMA_VERSION`` and add the step here, with a test that
upgrades a store written by the previous version (``tests/fixtures/results_store_v1.sql``).

- v1 -> v2: run identities. ``runs.run_key`` and ``runs.superseded_by`` are added; every
  finished training run and reproduction gets its key (computed from its stored kind, config
  hash, method, seed, code version, source run and the evaluation splits of its metric rows);
  where a re-run had stored the same run several times, the newest keeps the key and the older
  copies are marked ``superseded_by`` it (kept, but left out by readers); then the partial
  unique index on finished runs' keys is created.
- v2 -> v3: the ``detection`` task (ZSD: the instance protocol on boxes). Only the CHECK
  constraint on ``metrics.task`` changes: PostgreSQL swaps it in place; SQLite, which cannot
  alter a constraint, rebuilds ``metrics`` from this code's table definition (rows, ids and
  indexes kept) in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Connection, Integer, String, text

from zeroseg.platform.store.records import run_key
from zeroseg.platform.store.schema import RUN_KEY_INDEX, TASKS, Metric, task_check

log = logging.getLogger(__name__)

MigrationStep = Callable[..., None]  # (op: alembic Operations, conn: Connection) -> None


def _v1_to_v2(op: Any, conn: Connection) -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(Column("run_key", String(64), nullable=True))
        batch.add_column(Column("superseded_by", Integer, nullable=True))
    splits: dict[int, set[str]] = {}
    for run_id, eval_split in conn.execute(text("SELECT DISTINCT run_id, eval_split FROM "
                                                "metrics")):
        splits.setdefault(int(run_id), set()).add(eval_split)
    newest: dict[str, int] = {}
    rows = conn.execute(text(
        "SELECT id, kind, config_hash, method, seed, code_version, source_run_id FROM runs "
        "WHERE status = 'finished' AND kind IN ('train', 'reproduction') ORDER BY id DESC"))
    for run_id, kind, config_hash, method, seed, code, source in rows.all():
        key = run_key(kind=kind, config_hash=config_hash, method=method, seed=seed,
                      eval_splits=splits.get(int(run_id), ()), code_version=code,
                      source_run_id=source if kind == "reproduction" else None)
        if key in newest:
            conn.execute(text("UPDATE runs SET superseded_by = :by WHERE id = :id"),
                         {"by": newest[key], "id": run_id})
            log.info("results store: run %d is a copy of run %d; marked superseded", run_id,
                     newest[key])
        else:
            newest[key] = int(run_id)
            conn.execute(text("UPDATE runs SET run_key = :key WHERE id = :id"),
                         {"key": key, "id": run_id})
    op.create_index(RUN_KEY_INDEX, "runs", ["run_key"], unique=True,
                    sqlite_where=text("status = 'finished'"),
                    postgresql_where=text("status = 'finished'"))


def _v2_to_v3(op: Any, conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        # copy_from: the v3 table (its CHECK included); batch copies the rows into it by column.
        with op.batch_alter_table("metrics", copy_from=Metric.__table__, recreate="always"):
            pass
    else:
        op.drop_constraint("ck_metrics_task", "metrics", type_="check")
        op.create_check_constraint("ck_metrics_task", "metrics", task_check(TASKS))


#: from_version -> step upgrading to from_version + 1
MIGRATIONS: dict[int, MigrationStep] = {1: _v1_to_v2, 2: _v2_to_v3}


def missing_steps(current: int, target: int) -> list[int]:
    """The versions whose step must run to go from ``current`` to ``target`` (``[]`` if none
    is needed); raises ``KeyError`` naming the first version without a step."""
    steps = list(range(current, target))
    for v in steps:
        if v not in MIGRATIONS:
            raise KeyError(v)
    return steps


def apply_migrations(conn: Connection, current: int, target: int) -> list[int]:
    """Run the steps from ``current`` to ``target`` on ``conn`` (inside the caller's
    transaction); returns the versions now applied."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(conn))
    done = []
    for v in missing_steps(current, target):
        log.info("results store: migrating schema v%d -> v%d", v, v + 1)
        MIGRATIONS[v](op, conn)
        done.append(v + 1)
    return done
