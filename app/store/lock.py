"""One server per store: an exclusive lock beside a SQLite file, an advisory lock in PostgreSQL.

A second server on the same store would take the first one's running jobs for crashed ones,
requeue them and run them again beside it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


class DatabaseInUse(Exception):
    """Another server holds this store."""


def _in_use(holder: str, where: object) -> DatabaseInUse:
    return DatabaseInUse(
        f"another trainwire server ({holder}) uses {where}: stop it first, or give this one its "
        "own TRAINWIRE_DATABASE_URL"
    )


class _FileLock:
    """An exclusive lock beside a SQLite file, held for as long as the server runs.

    A second server on the same file would take the first one's running jobs for crashed ones,
    requeue them and run them again beside it. The kernel drops the lock when the process dies,
    so a `kill -9` leaves nothing to clean up.
    """

    def __init__(self, database: Path):
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = open(database.with_name(database.name + ".lock"), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise _in_use(f"pid {holder}", database) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._file = lock

    def close(self) -> None:
        self._file.close()  # closing the file releases the lock


class _PostgresLock:
    """The same for a PostgreSQL database: a session-level advisory lock on a connection of its
    own, which the server dies holding no longer than its connection lives."""

    KEY = 0x7472_6E77  # "trnw"; advisory locks are per database

    def __init__(self, url: str):
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"application_name": f"trainwire pid {os.getpid()}"},
        )
        self._conn = self._engine.connect()
        try:
            got = self._conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({self.KEY})").scalar()
            if not got:
                holder = self._conn.exec_driver_sql(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    f"AND l.objid = {self.KEY} AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ).scalar()
                name = str(holder or "")
                raise _in_use(
                    name.removeprefix("trainwire ") if name.startswith("trainwire pid ") else "?",
                    make_url(url).render_as_string(hide_password=True),
                )
            self._conn.commit()  # the lock is the session's: it outlives this transaction
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


def lock_store(url: str) -> _FileLock | _PostgresLock | None:
    """Take the store's one-server lock (SQLite file or PostgreSQL database); None elsewhere."""
    database = sqlite_file(url)
    if database is not None:
        return _FileLock(database)
    if make_url(url).get_backend_name() == "postgresql":
        return _PostgresLock(url)
    return None


def database_in_use(url: str) -> str | None:
    """Why a server could not start on `url` now (another one holds the store), or None.

    A look before starting, so that a busy store is reported in one line; the store takes the
    lock itself when it opens, which settles a race between two starts."""
    database = sqlite_file(url)
    if database is not None and not database.parent.is_dir():
        return None  # nothing to hold yet, and nothing to create before the port is bound
    try:
        lock = lock_store(url)
    except DatabaseInUse as exc:
        return str(exc)
    except Exception:  # unreachable or misconfigured: the store says why when it opens
        return None
    if lock is not None:
        lock.close()
    return None


def sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()
