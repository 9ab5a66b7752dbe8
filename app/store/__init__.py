"""The job store: SQLAlchemy over SQLite (WAL) by default, one writer thread, readers anywhere."""

from app.store.store import DatabaseInUse, JobRow, Store, database_in_use

__all__ = ["DatabaseInUse", "JobRow", "Store", "database_in_use"]
