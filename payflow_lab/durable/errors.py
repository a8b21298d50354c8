"""What can go wrong with a durable store, each error naming the database and what is wrong with it.

Every error here is a :class:`~payflow_lab.domain.ValidationError` whose
``field`` is ``"db"`` (or ``"payload"`` for a malformed event), so the CLI
reports it in one line with exit status 2, like any other bad argument, and a
caller can tell *what* was refused without parsing the message.
"""

from __future__ import annotations

from ..domain import ValidationError

__all__ = [
    "CorruptDatabase",
    "DatabaseLocked",
    "DiskFull",
    "MalformedPayload",
    "NotAnOutbox",
    "OutboxDatabaseError",
    "ReadOnlyDatabase",
    "SchemaVersionError",
]


class OutboxDatabaseError(ValidationError):
    """The database file cannot be used as it is. ``path`` is the file (or ``":memory:"``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__("db", f"{path}: {message}")
        self.path = path


class SchemaVersionError(OutboxDatabaseError):
    """The file was written by a newer (or unknown) schema version than this code knows."""

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(path, f"schema version {found} is unknown; this payflow-lab knows versions 1 to {known} "
                               "(was the file written by a newer release?)")
        self.found = found
        self.known = known


class NotAnOutbox(OutboxDatabaseError):
    """The file is a SQLite database, but not one of ours (other tables, another application id)."""


class CorruptDatabase(OutboxDatabaseError):
    """The file is not a SQLite database at all, or its pages are damaged."""


class DatabaseLocked(OutboxDatabaseError):
    """Another process holds the write lock for longer than the busy timeout."""


class DiskFull(OutboxDatabaseError):
    """The disk (or SQLite's size limit) is full: a write was refused and its transaction rolled back."""


class ReadOnlyDatabase(OutboxDatabaseError):
    """The database cannot be written: a read-only file, folder or mount."""


class MalformedPayload(ValidationError):
    """An event's payload is not what the schema promises (bad JSON, missing fields, a bad payment)."""

    def __init__(self, message: str) -> None:
        super().__init__("payload", message)
