"""The state file: cursors, scans in progress and emitted ids, in one SQLite file.

Every commit is one small transaction (``synchronous=FULL``), so the file is consistent at
every instant and a commit costs the same whatever the number of ids kept. The file is
held with an exclusive lock for the life of the process: two daemons can never share it.
A file that is unreadable, locked, foreign or newer is refused, never replaced.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from poller import metrics
from poller.errors import StateError
from poller.glance.paging import Window

SCHEMA_VERSION = 1
# "GlPo": marks the file as ours, so a foreign SQLite file is refused, not adopted.
APPLICATION_ID = 0x476C506F

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cursors (
    partner_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    scanned_until TEXT NOT NULL,
    scan_start TEXT,
    scan_end TEXT,
    scan_token INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (partner_id, stream)
);
CREATE TABLE emitted (
    partner_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    session_id INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    PRIMARY KEY (partner_id, stream, session_id)
) WITHOUT ROWID;
CREATE INDEX emitted_by_start ON emitted (partner_id, stream, start_time);
"""


@dataclass(frozen=True)
class Scan:
    """A scan in progress: its window, and the token of the next page to fetch."""

    window: Window
    token: int


@dataclass(frozen=True)
class Cursor:
    """Every session starting before ``scanned_until`` has been scanned (bar late ends)."""

    scanned_until: datetime
    scan: Scan | None = None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class StateStore:
    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """Open (or create) the file and take its exclusive lock, or raise StateError."""
        shown = str(path)
        try:
            _create_private(path)
            os.chmod(path, 0o600)
            db = sqlite3.connect(path, timeout=0, isolation_level=None)
        except OSError as exc:
            raise StateError(shown, f"cannot open: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise StateError(shown, f"cannot open: {exc}") from None
        try:
            cls._lock_and_migrate(db, shown)
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StateError(
                    shown,
                    "is locked by another glance-poller process",
                    "stop that process, or give this one its own state.path",
                ) from None
            raise StateError(shown, f"cannot be read ({exc})") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StateError(shown, f"is damaged or not a state file ({exc})") from None
        except StateError:
            db.close()
            raise
        return cls(path, db)

    @staticmethod
    def _lock_and_migrate(db: sqlite3.Connection, shown: str) -> None:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        try:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StateError(shown, f"is damaged (integrity check: {check and check[0]})")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and tables == 0:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?), ('created_at', ?)",
                    (str(SCHEMA_VERSION), _iso(datetime.now(UTC))),
                )
            elif app_id != APPLICATION_ID:
                raise StateError(shown, "is an SQLite file that glance-poller did not write")
            version = int(
                db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            )
            if version > SCHEMA_VERSION:
                raise StateError(
                    shown,
                    f"was written by a newer glance-poller (state schema {version}; this "
                    f"version reads up to {SCHEMA_VERSION})",
                    "run the newer glance-poller, or restore a backup of the state file",
                )
            # Writing under the exclusive locking mode keeps the lock until close().
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (_iso(datetime.now(UTC)),)
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self._db.close()

    def cursor(self, partner_id: int, stream: str) -> Cursor | None:
        row = self._db.execute(
            "SELECT scanned_until, scan_start, scan_end, scan_token FROM cursors "
            "WHERE partner_id = ? AND stream = ?",
            (partner_id, stream),
        ).fetchone()
        if row is None:
            return None
        scan = None
        if row[1] is not None:
            scan = Scan(Window(_parse(row[1]), _parse(row[2])), int(row[3]))
        return Cursor(_parse(row[0]), scan)

    def already_emitted(self, partner_id: int, stream: str, ids: Iterable[int]) -> set[int]:
        wanted = list(ids)
        found: set[int] = set()
        # SQLite limits bound parameters; pages are at most 1000 ids, chunk to stay safe.
        for offset in range(0, len(wanted), 500):
            chunk = wanted[offset : offset + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT session_id FROM emitted WHERE partner_id = ? AND stream = ? "  # noqa: S608
                f"AND session_id IN ({marks})",
                (partner_id, stream, *chunk),
            )
            found.update(row[0] for row in rows)
        return found

    def commit(
        self,
        partner_id: int,
        *,
        cursors: Mapping[str, Cursor] | None = None,
        emitted: Mapping[str, Sequence[tuple[int, datetime]]] | None = None,
    ) -> None:
        """Record acknowledged events and cursors, of any streams, in one durable transaction."""
        now = _iso(datetime.now(UTC))
        started = time.perf_counter()
        with self._transaction():
            for stream, ids in (emitted or {}).items():
                # One statement per stream: SQLite walks a JSON object {id: start}, at half
                # the cost of binding every row from Python (bench/README.md).
                self._db.execute(
                    "INSERT OR IGNORE INTO emitted "
                    "SELECT ?, ?, CAST(key AS INTEGER), value FROM json_each(?)",
                    (
                        partner_id,
                        stream,
                        orjson.dumps(
                            {sid: int(start.timestamp()) for sid, start in ids},
                            option=orjson.OPT_NON_STR_KEYS,
                        ),
                    ),
                )
            for stream, cursor in (cursors or {}).items():
                scan = cursor.scan
                self._db.execute(
                    "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        partner_id,
                        stream,
                        _iso(cursor.scanned_until),
                        _iso(scan.window.start) if scan else None,
                        _iso(scan.window.end) if scan else None,
                        scan.token if scan else None,
                        now,
                    ),
                )
        metrics.STATE_COMMIT.observe(time.perf_counter() - started)

    def count_emitted(self, partner_id: int, stream: str, window: Window) -> int:
        """How many ids this stream emitted for sessions starting inside ``window``."""
        row = self._db.execute(
            "SELECT count(*) FROM emitted WHERE partner_id = ? AND stream = ? "
            "AND start_time >= ? AND start_time < ?",
            (partner_id, stream, int(window.start.timestamp()), int(window.end.timestamp())),
        ).fetchone()
        return int(row[0])

    def forget_before(self, partner_id: int, stream: str, before: datetime) -> int:
        """Drop the ids of sessions that started before ``before`` (outside the horizon)."""
        with self._transaction():
            removed = self._db.execute(
                "DELETE FROM emitted WHERE partner_id = ? AND stream = ? AND start_time < ?",
                (partner_id, stream, int(before.timestamp())),
            ).rowcount
        return int(removed)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def partners(self, stream: str) -> list[int]:
        rows = self._db.execute(
            "SELECT partner_id FROM cursors WHERE stream = ? ORDER BY partner_id", (stream,)
        )
        return [int(row[0]) for row in rows]

    def reset(self, partner_id: int | None = None, stream: str | None = None) -> int:
        """Forget cursors and emitted ids (all, or one partner's, or one stream's)."""
        where, params = _scope(partner_id, stream)
        with self._transaction():
            removed = self._db.execute(f"DELETE FROM cursors{where}", params).rowcount  # noqa: S608
            self._db.execute(f"DELETE FROM emitted{where}", params)  # noqa: S608
        return int(removed)

    def snapshot(self) -> dict[str, Any]:
        """Everything the file holds, summarised, for ``glance-poller state show``."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        streams: list[dict[str, Any]] = []
        for partner_id, stream in self._db.execute(
            "SELECT partner_id, stream FROM cursors ORDER BY partner_id, stream"
        ).fetchall():
            cursor = self.cursor(partner_id, stream)
            assert cursor is not None
            count, oldest, newest = self._db.execute(
                "SELECT count(*), min(start_time), max(start_time) FROM emitted "
                "WHERE partner_id = ? AND stream = ?",
                (partner_id, stream),
            ).fetchone()
            streams.append(
                {
                    "partnerId": partner_id,
                    "stream": stream,
                    "scannedUntil": _iso(cursor.scanned_until),
                    "scanInProgress": None
                    if cursor.scan is None
                    else {
                        "windowStart": _iso(cursor.scan.window.start),
                        "windowEnd": _iso(cursor.scan.window.end),
                        "nextId": cursor.scan.token,
                    },
                    "emittedIds": count,
                    "emittedStartTimes": None
                    if count == 0
                    else {
                        "oldest": _iso(datetime.fromtimestamp(oldest, UTC)),
                        "newest": _iso(datetime.fromtimestamp(newest, UTC)),
                    },
                }
            )
        return {"path": str(self.path), "meta": meta, "streams": streams}


def parse_cli_date(text: str) -> datetime:
    """A date or date-time from the command line; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO date or date-time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _scope(partner_id: int | None, stream: str | None) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if partner_id is not None:
        clauses.append("partner_id = ?")
        params.append(partner_id)
    if stream is not None:
        clauses.append("stream = ?")
        params.append(stream)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
