"""Which outbox: :func:`open_outbox` picks the store from the address, so commands and lessons take either."""

from __future__ import annotations

import os
from typing import Any

from payflow_lab.durable.outbox import Outbox, is_postgres_url
from payflow_lab.durable.postgres import PostgresOutbox
from payflow_lab.durable.schema import MEMORY

__all__ = ["open_outbox"]


def open_outbox(db: str | os.PathLike[str] = MEMORY, **options: Any) -> Outbox:
    """The outbox at ``db``: PostgreSQL for a ``postgresql://`` URL, SQLite for a file path (or ``":memory:"``).

    ``options`` go to the store (``clock``, ``kinds``, ``offload``, ...). psycopg is
    imported only when a PostgreSQL store is opened.
    """
    if is_postgres_url(db):
        return PostgresOutbox(str(db), **options)
    return Outbox(db, **options)
