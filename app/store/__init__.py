"""The job store: SQLAlchemy over SQLite (WAL) by default, one writer thread, readers anywhere."""

from app.store.lock import DatabaseInUse, database_in_use
from app.store.rows import JobRow
from app.store.store import Store
from app.store.writer import StoreUnwritable

__all__ = ["DatabaseInUse", "JobRow", "Store", "StoreUnwritable", "database_in_use"]
