"""The state file: cursors, scans in progress and emitted ids, in one SQLite file.

Every commit is one small transaction, so the file is consistent at every instant and a
commit costs the same whatever the number of ids kept. A commit that records emitted ids (or
forgets them) is on disk when it returns (``synchronous=FULL``: an fsync): the ids are the
promise that nothing is sent twice. A commit of cursors alone only spares re-reading: it
reaches the disk with the next fsync (WAL, ``synchronous=NORMAL``), so a power loss can take
it back, never a crash of the process, and an idle partner's tick costs no fsync. The file is held
with an exclusive lock (``flock``) for the life of the process: two daemons can never share
it, while ``state show`` can still read a consistent snapshot beside a running daemon.

What is on disk is checked once, where it enters: a file that is empty, damaged, foreign,
newer, or whose rows do not read back as cursors is refused (``StateError``, exit code 4),
and a refused file or folder is not touched at all, not even its mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from poller import metrics
from poller.cursor import Cursor, CursorError
from poller.errors import StateError, StateUnwritable
from poller.window import Window

SCHEMA_VERSION = 1
# "GlPo": marks the file as ours, so a foreign SQLite file is refused, not adopted.
APPLICATION_ID = 0x476C506F

_TABLES = {
    "meta": ("key", "value"),
    "cursors": (
        "partner_id",
        "stream",
        "scanned_until",
        "scan_start",
        "scan_end",
        "scan_token",
        "updated_at",
    ),
    "emitted": ("partner_id", "stream", "session_id", "start_time"),
}
# Columns the daemon reads as integers: SQLite would keep any text put there (an id that is
# never matched again would re-send its session).
_INTEGERS = {
    "cursors": ("partner_id",),
    "emitted": ("partner_id", "session_id", "start_time"),
}
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
class Forget:
    """Drop the ids these streams emitted for sessions that started before ``before``."""

    streams: tuple[str, ...]
    before: datetime


# The dates a cursor may hold, decided here for the command line (``parse_cli_date``) and the
# state file alike: from EARLIEST, since the Glance Activity Service holds no session that old
# and every date the daemon computes from a cursor (less the overlap or the horizon, at most a
# year) stays a date; up to the host's clock plus glance.clock_tolerance, as far as the daemon
# ever moves a cursor (a stored one beyond is not damage: the completed stream refuses it at
# every tick, CursorInFuture, and `state reset --to` moves it back).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def too_early(moment: datetime) -> str | None:
    """Why ``moment`` (aware, in any zone) cannot be a cursor, or None."""
    if moment < EARLIEST:
        return (
            f"{moment.isoformat()} is before {EARLIEST:%Y-%m-%d}, older than the Glance "
            "Activity Service"
        )
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"a date without a zone: {text!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"not a date in UTC: {text!r}") from None


def _cursor_from_row(row: Sequence[Any]) -> Cursor:
    """A stored cursor, or ValueError/CursorError when the row does not read back as one."""
    scanned_until, scan_start, scan_end, scan_token = row
    if not isinstance(scanned_until, str):
        raise ValueError(f"scanned_until is not a date: {scanned_until!r}")
    until = _parse(scanned_until)
    problem = too_early(until)
    if problem is not None:
        raise ValueError(f"scanned_until {problem}")
    if scan_start is None and scan_end is None and scan_token is None:
        return Cursor(until)
    if not (isinstance(scan_start, str) and isinstance(scan_end, str)):
        raise ValueError("a scan in progress without its window")
    if type(scan_token) is not int:
        raise ValueError(f"scan_token is not an integer: {scan_token!r}")
    return Cursor(until, Window(_parse(scan_start), _parse(scan_end)), scan_token)


def _check_file(path: Path, shown: str) -> bool:
    """Whether the file exists (False: it is to be made); raises for what cannot be one."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(shown, f"cannot be read: {exc.strerror}") from None
    if not path.is_file():
        raise StateError(shown, "is not a regular file", "give state.path a file's name")
    if info.st_size == 0:
        raise StateError(shown, "is empty (zero bytes): it is damaged or was never written")
    return True


def _create(path: Path, shown: str) -> None:
    """A new, empty state file, made whole beside the path and moved into place at once: a
    crash never leaves a zero-byte file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?), ('created_at', ?)",
                (str(SCHEMA_VERSION), _iso(datetime.now(UTC))),
            )
        finally:
            db.close()
        try:
            os.link(temporary, path)  # fails if another process made it meanwhile
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    except OSError as exc:
        raise StateError(shown, f"cannot be created: {exc.strerror}") from None


def _validate(db: sqlite3.Connection, shown: str) -> None:
    """Everything the daemon will read, read once now: anything odd is refused here."""
    try:
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise StateError(shown, f"is damaged (integrity check: {check and check[0]})")
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise StateError(shown, "is an SQLite file that glance-poller did not write")
        for table, columns in _TABLES.items():
            found = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            if found != columns:
                raise StateError(shown, f"is damaged (table {table!r} is missing or altered)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit() or int(row[0]) < 1:
            raise StateError(shown, f"is damaged (schema version {row and row[0]!r})")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                shown,
                f"was written by a newer glance-poller (state schema {version}; this "
                f"version reads up to {SCHEMA_VERSION})",
                "run the newer glance-poller, or restore a backup of the state file",
            )
        for table, columns in _INTEGERS.items():
            for column in columns:
                odd = db.execute(
                    f"SELECT {column} FROM {table} "  # noqa: S608 (names of our own schema)
                    f"WHERE typeof({column}) != 'integer' LIMIT 1"
                ).fetchone()
                if odd is not None:
                    raise StateError(
                        shown, f"is damaged ({table}.{column} holds {odd[0]!r}, not an integer)"
                    )
        for row in db.execute(
            "SELECT partner_id, stream, scanned_until, scan_start, scan_end, scan_token "
            "FROM cursors"
        ):
            try:
                _cursor_from_row(row[2:])
            except (ValueError, CursorError) as exc:
                raise StateError(
                    shown, f"is damaged (the cursor of partner {row[0]} {row[1]}: {exc})"
                ) from None
    except sqlite3.DatabaseError as exc:
        raise StateError(shown, f"is damaged or not a state file ({exc})") from None


# What a write can meet that says nothing of the file itself: its volume is full, or the
# device failed one write (a file-size limit too). The next write may well succeed.
_WEATHER = ("SQLITE_FULL", "SQLITE_IOERR")

# What follows a state file removed or replaced under the daemon: it stops (exit 4).
_GONE = (
    "nothing more is written to it; restore the file, or start the daemon again, which "
    "begins from what state.path holds then"
)


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class StateStore:
    def __init__(self, path: Path, connection: sqlite3.Connection, lock_fd: int | None) -> None:
        self.path = path
        self._db = connection
        self._lock_fd = lock_fd
        # The locked file's identity, to compare with what the path names at each write.
        self._locked = None if lock_fd is None else _identity(os.fstat(lock_fd))
        # Why the last write failed for want of room or of a working device (None: it went
        # through): the daemon is not ready while it stands.
        self.write_problem: str | None = None

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """Open (or create) the file and take its exclusive lock, or raise StateError."""
        shown = str(path)
        if not _check_file(path, shown):
            _create(path, shown)
        try:
            lock_fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise StateError(shown, f"cannot be opened: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StateError(
                shown,
                "is locked by another glance-poller process",
                "stop that process, or give this one its own state.path",
            ) from None
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5)
            db.isolation_level = None
            try:
                _validate(db, shown)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)",
                    (_iso(datetime.now(UTC)),),
                )
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise StateError(shown, f"cannot be read ({exc})") from None
        except BaseException:
            os.close(lock_fd)
            raise
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        return cls(path, db, lock_fd)

    @classmethod
    def read_only(cls, path: Path) -> StateStore:
        """A reader that never writes and takes no lock (``state show``, also while the daemon
        runs); the file is checked as ``open`` checks it."""
        shown = str(path)
        if not _check_file(path, shown):
            raise StateError(shown, "does not exist", "the daemon creates it on its first start")
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            db.isolation_level = None
            _validate(db, shown)
        except sqlite3.DatabaseError as exc:
            raise StateError(shown, f"cannot be read ({exc})") from None
        return cls(path, db, None)

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def cursor(self, partner_id: int, stream: str) -> Cursor | None:
        row = self._db.execute(
            "SELECT scanned_until, scan_start, scan_end, scan_token FROM cursors "
            "WHERE partner_id = ? AND stream = ?",
            (partner_id, stream),
        ).fetchone()
        return None if row is None else _cursor_from_row(row)

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
        forget: Forget | None = None,
    ) -> None:
        """Record acknowledged events and cursors, of any streams, in one durable transaction
        (and drop ids past the horizon in the same one)."""
        now = _iso(datetime.now(UTC))
        started = time.perf_counter()
        records_ids = any((emitted or {}).values())
        with self._transaction(durable=records_ids or forget is not None):
            for stream, ids in (emitted or {}).items():
                if not ids:
                    continue
                # One statement per stream: SQLite walks a JSON object {id: start}, at half
                # the cost of binding every row from Python (bench/README.md). An id known
                # already keeps the later start: a record whose start cannot be read is
                # remembered at the start of a window it was listed in, and a later-starting
                # one narrows where it lies.
                self._db.execute(
                    "INSERT INTO emitted "
                    "SELECT ?, ?, CAST(key AS INTEGER), value FROM json_each(?) WHERE true "
                    "ON CONFLICT DO UPDATE SET start_time = max(start_time, excluded.start_time)",
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
                window = cursor.window
                self._db.execute(
                    "INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        partner_id,
                        stream,
                        _iso(cursor.scanned_until),
                        _iso(window.start) if window else None,
                        _iso(window.end) if window else None,
                        cursor.next_id if window else None,
                        now,
                    ),
                )
            if forget is not None:
                for stream in forget.streams:
                    self._db.execute(
                        "DELETE FROM emitted WHERE partner_id = ? AND stream = ? "
                        "AND start_time < ?",
                        (partner_id, stream, int(forget.before.timestamp())),
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

    def count_before(self, partner_id: int, stream: str, before: datetime) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM emitted WHERE partner_id = ? AND stream = ? AND start_time < ?",
            (partner_id, stream, int(before.timestamp())),
        ).fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        self._check_still_at_its_path()
        try:
            self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does): nothing to undo then.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(_WEATHER):
                unwritable = StateUnwritable(str(self.path), str(exc))
                self.write_problem = str(unwritable)
                raise unwritable from None
            raise
        self.write_problem = None

    def _check_still_at_its_path(self) -> None:
        """The lock is on the file, not on its name: once the file is removed or replaced,
        writes would go on into a file no one will read, and a second daemon would find the
        path free. Every write asks first (one stat call)."""
        if self._locked is None:
            return
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            raise StateError(str(self.path), "was removed while the daemon ran", _GONE) from None
        if _identity(named) != self._locked:
            raise StateError(str(self.path), "was replaced while the daemon ran", _GONE)

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

    def snapshot(self, now: datetime | None = None) -> dict[str, Any]:
        """Everything the file holds, summarised, read in one transaction (a consistent
        snapshot), for ``glance-poller state show``; ``now`` adds each cursor's lag."""
        self._db.execute("BEGIN")
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            rows = self._db.execute(
                "SELECT partner_id, stream, scanned_until, scan_start, scan_end, scan_token "
                "FROM cursors ORDER BY partner_id, stream"
            ).fetchall()
            streams = [
                self._describe(row[0], row[1], _cursor_from_row(row[2:]), now) for row in rows
            ]
        finally:
            self._db.execute("COMMIT")
        return {"path": str(self.path), "meta": meta, "streams": streams}

    def _describe(
        self, partner_id: int, stream: str, cursor: Cursor, now: datetime | None
    ) -> dict[str, Any]:
        count, oldest, newest = self._db.execute(
            "SELECT count(*), min(start_time), max(start_time) FROM emitted "
            "WHERE partner_id = ? AND stream = ?",
            (partner_id, stream),
        ).fetchone()
        window = cursor.window
        described: dict[str, Any] = {
            "partnerId": partner_id,
            "stream": stream,
            "scannedUntil": _iso(cursor.scanned_until),
            "scanInProgress": None
            if window is None
            else {
                "windowStart": _iso(window.start),
                "windowEnd": _iso(window.end),
                "nextId": cursor.next_id,
            },
            "emittedIds": count,
            "emittedStartTimes": None
            if count == 0
            else {
                "oldest": _iso(datetime.fromtimestamp(oldest, UTC)),
                "newest": _iso(datetime.fromtimestamp(newest, UTC)),
            },
        }
        if now is not None:
            described["lagSeconds"] = round((now - cursor.scanned_until).total_seconds(), 3)
        return described


def move_aside(path: Path) -> Path:
    """Rename a state file nobody can use out of the way (``state reset``): kept, with the
    time in its name, so that nothing is lost by starting over."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def parse_cli_date(text: str, clock_tolerance: float) -> datetime:
    """A date or date-time from the command line; without a zone it is UTC. ValueError,
    saying why, for what is not one or lies outside the dates a cursor may hold: from
    ``EARLIEST`` to the host's clock plus ``clock_tolerance`` seconds."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO date or date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Compared before the zone is taken off: year 1 at +01:00, or 9999 at -01:00, is no date
    # in UTC.
    problem = too_early(moment)
    if problem is not None:
        raise ValueError(problem)
    latest = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=clock_tolerance)
    if moment > latest:
        raise ValueError(
            f"{moment.isoformat()} lies in the future (after {_iso(latest)}, the host's "
            "clock plus glance.clock_tolerance)"
        )
    return moment.astimezone(UTC)


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
