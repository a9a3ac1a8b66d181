"""Schema migrations of the results store, one hand-written step per version.

``MIGRATIONS[v]`` upgrades a store from schema ``v`` to ``v + 1``. A step receives an Alembic
:class:`~alembic.operations.Operations` bound to the open transaction (``op.add_column``,
``op.create_index``, ...; on SQLite use ``op.batch_alter_table`` for what SQLite cannot alter in
place) and the raw connection. :func:`apply_migrations` runs the missing steps in one
transaction, so a store is either fully upgraded or left as it was.

The first schema is v1; no step exists yet. When the tables change, bump
``schema.SCHEMA_VERSION`` and add the step here, with a test that upgrades a store written by the
previous version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection

log = logging.getLogger(__name__)

MigrationStep = Callable[..., None]  # (op: alembic Operations, conn: Connection) -> None

#: from_version -> step upgrading to from_version + 1
MIGRATIONS: dict[int, MigrationStep] = {}


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
