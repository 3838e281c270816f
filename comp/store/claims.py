"""Who trains which of a run's units (a fold, or a full-data fit "seed"): claims shared by workers.

Several `comp train --fold all` workers on one run train each unit once: a worker claims a unit
before training it, heartbeats while it trains, and marks it done. Two implementations, one interface:

    FileClaims    a lock file per unit under folds/.locks/ (flock): workers sharing a workdir. The
                  operating system releases a dead worker's lock at once; the heartbeat only
                  touches the file, for `comp status`.
    DbClaims      a table `comp_claims` in the tuning database (--storage: PostgreSQL for many
                  machines, or SQLite): workers that share only the database. A claim whose owner
                  stopped heartbeating for GRACE_FACTOR beats (its process or machine died) is taken
                  over. Times are the database server's, so the workers' clocks need not agree.

A unit is done when its metrics.json exists in the run folder (comp.store.runs.fold_done); the
database also records it done, for workers on other machines that cannot see that folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from comp.core.console import warn
from comp.core.errors import CompError, one_line

HEARTBEAT_SECONDS = 30  # how often a training worker says it is alive
GRACE_FACTOR = 4  # silent this many beats: its owner is taken for dead (generous: a busy CPU delays beats)
CLOCK_SLACK = 1.0  # seconds more: SQLite's CURRENT_TIMESTAMP counts whole seconds
TABLE = "comp_claims"
ATTEMPTS = 5  # workers starting together on a new database race to create the table; retry
SQLITE_LOCK_SECONDS = 60  # wait this long for a SQLite lock (heartbeat threads, local workers)

TRAINING, DONE, FREE, STALE = "training", "done", "free", "stale"


_TOKENS: dict[int, str] = {}


def owner_name() -> str:
    """This worker: host and pid (what `comp status` shows), and a token, one per process, that tells
    apart two containers whose host names and pids agree."""
    token = _TOKENS.setdefault(os.getpid(), secrets.token_hex(2))
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


@dataclass(frozen=True)
class Holder:
    """One unit's state: done, training (by `owner` since `since`, last heartbeat `heartbeat`),
    stale (training, but its owner went silent), or free."""

    run: str
    unit: str  # "fold" or "seed"
    index: int
    state: str
    owner: str = ""
    since: dt.datetime | None = None
    heartbeat: dt.datetime | None = None


class Claim:
    """A unit this worker holds: `beat()` while training, then `finish()` (done) or `release()`."""

    lost = False  # another worker took it over (this one was silent too long): said once

    def beat(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class Claims:
    """The interface: `claim` a unit (None when another worker holds it or finished it elsewhere),
    `holder` of one unit, `holders` of every claimed unit (for comp status)."""

    heartbeat_seconds: float = HEARTBEAT_SECONDS
    where: str = ""

    def claim(self, run: str, unit: str, index: int, redo_before: dt.datetime | None = None) -> Claim | None:
        """`redo_before` (a `now()` of this store): a unit marked done before then is claimed again (--force)."""
        raise NotImplementedError

    def now(self) -> dt.datetime:
        """The store's clock (the database server's): what heartbeats and `redo_before` are measured by."""
        return dt.datetime.now(dt.timezone.utc)

    def holder(self, run: str, unit: str, index: int) -> Holder:
        raise NotImplementedError

    def holders(self) -> list[Holder]:
        raise NotImplementedError


@contextlib.contextmanager
def heartbeating(claim: Claim, seconds: float):
    """Beat `claim` every `seconds` from a thread while the block runs (training holds the GIL
    in long stretches; the grace of GRACE_FACTOR beats absorbs the delays)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds):
            claim.beat()

    thread = threading.Thread(target=beat, name="comp-claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield claim
    finally:
        stop.set()
        thread.join()


# -- file locks: workers sharing one workdir -------------------------------------------------------


def lock_path(folds: Path, run_name: str, index: int, unit: str = "fold") -> Path:
    # Outside the run folder: --force deletes that folder, and a lock must outlive it.
    return folds / ".locks" / f"{run_name}.{unit}{index}.lock"


LOCK_NAME = re.compile(r"^(?P<run>.+)\.(?P<unit>fold|seed)(?P<index>\d+)\.lock$")


@contextlib.contextmanager
def waiting_for(path: Path):
    """Hold an exclusive lock on `path` for the block, waiting for it as long as another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on `path` for the block; yields False (at once) if another process holds it."""
    handle = _try_lock(path)
    if handle is None:
        yield False
        return
    try:
        yield True
    finally:
        _unlock(handle)


def _try_lock(path: Path):
    """The open, flock-ed file at `path`, this process's name written in it; None if another holds it.
    (Not POSIX: no locking, as before: every call succeeds.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"owner": owner_name(), "pid": os.getpid(), "since": time.time()}))
    handle.flush()
    return handle


def _unlock(handle) -> None:
    with contextlib.suppress(ImportError):
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


class FileClaim(Claim):
    def __init__(self, path: Path, handle):
        self.path, self.handle = path, handle

    def beat(self) -> None:
        with contextlib.suppress(OSError):  # the mtime is only for comp status
            os.utime(self.path)

    def finish(self) -> None:  # done is the unit's metrics.json; nothing to record here
        self.release()

    def release(self) -> None:
        if self.handle is not None:
            _unlock(self.handle)
            self.handle = None


class FileClaims(Claims):
    """Claims as lock files under `folds`/.locks/ (see the module docstring)."""

    def __init__(self, folds: Path, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.folds, self.heartbeat_seconds = Path(folds), heartbeat_seconds
        self.where = f"lock files in {self.folds / '.locks'}"

    def claim(self, run, unit, index, redo_before=None):
        path = lock_path(self.folds, run, index, unit)
        handle = _try_lock(path)
        return None if handle is None else FileClaim(path, handle)

    def holder(self, run, unit, index):
        path = lock_path(self.folds, run, index, unit)
        if not path.exists():
            return Holder(run, unit, index, FREE)
        # Probing takes the lock for an instant; a worker that misses a unit then retries it.
        with exclusive(path) as free:
            if free:
                return Holder(run, unit, index, FREE)
        try:
            record = json.loads(path.read_text() or "{}")
            beat = path.stat().st_mtime
        except (OSError, ValueError):
            record, beat = {}, None
        since = record.get("since")
        return Holder(run, unit, index, TRAINING, record.get("owner", "?"), _from_unix(since), _from_unix(beat))

    def holders(self):
        found = []
        for path in sorted((self.folds / ".locks").glob("*.lock")):
            match = LOCK_NAME.match(path.name)
            if match:
                held = self.holder(match["run"], match["unit"], int(match["index"]))
                if held.state != FREE:
                    found.append(held)
        return found


def _from_unix(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


# -- a database: workers sharing only --storage ---------------------------------------------------


def _aware(moment) -> dt.datetime | None:
    """A database time as an aware UTC datetime (SQLite hands back naive UTC, or a string)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _table(metadata):
    from sqlalchemy import Column, DateTime, Float, Integer, String, Table

    return Table(
        TABLE, metadata,
        Column("run", String(255), primary_key=True),
        Column("split", String(64), primary_key=True),  # the fold split: a run name reused on other data differs
        Column("unit", String(16), primary_key=True),
        Column("number", Integer, primary_key=True),
        Column("state", String(16), nullable=False),  # training | done | free
        Column("owner", String(255), nullable=False),  # host:pid:token
        Column("since", DateTime(timezone=True)),  # when the owner claimed it (server time)
        Column("heartbeat", DateTime(timezone=True)),  # its last beat; for done, when it finished
        Column("interval", Float, nullable=False),  # the owner's seconds between beats: stale after GRACE_FACTOR
        Column("beats", Integer, nullable=False),  # counts every change: a takeover updates only what it read
    )


class DbClaim(Claim):
    def __init__(self, claims: "DbClaims", key: dict, owner: str):
        self.claims, self.key, self.owner = claims, key, owner

    def _update(self, **values) -> bool:
        from sqlalchemy import func, update

        table = self.claims.table
        where = [table.c[k] == v for k, v in self.key.items()] + [table.c.owner == self.owner,
                                                                  table.c.state == TRAINING]
        statement = update(table).where(*where).values(beats=table.c.beats + 1,
                                                       heartbeat=func.current_timestamp(), **values)
        with self.claims.engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def _say_lost(self, what: str) -> None:
        if not self.lost:
            self.lost = True
            warn(f"{self.key['unit']} {self.key['number']} of run {self.key['run']}: another worker took it over "
                 f"while this one was silent (heartbeat late); {what}")

    def beat(self) -> None:
        try:
            if not self._update():
                self._say_lost("both train it now")
        except Exception as err:  # noqa: BLE001 -- a network blip must not kill the training; the next beat retries
            warn(f"claims database: heartbeat failed ({one_line(err, 200)}); retrying")

    def finish(self) -> None:
        try:
            if not self._update(state=DONE):
                self._say_lost("its files here are complete all the same")
        except Exception as err:  # noqa: BLE001 -- the unit's files are written; the claim goes stale instead
            warn(f"claims database: could not mark {self.key['unit']} {self.key['number']} done "
                 f"({one_line(err, 200)}); its files are complete")

    def release(self) -> None:
        with contextlib.suppress(Exception):  # unreachable database: the claim goes stale instead
            self._update(state=FREE)


def engine_options(url: str) -> dict:
    """SQLAlchemy engine options for a --storage URL: SQLite waits for its lock; a server connection
    is checked before use (a long fold or trial outlives idle connections)."""
    return {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def unusable_url(shown: str, err: Exception) -> CompError:
    """The one line for a --storage URL that cannot be opened at all: no driver, or not a URL."""
    if isinstance(err, ImportError):
        return CompError(f"--storage {shown}: its database driver is not installed "
                         "(PostgreSQL: pip install 'comp[postgres]')")
    return CompError(f"--storage {shown}: not a database URL ({err}); use sqlite:///path.db or "
                     "postgresql://user:password@host:5432/database")


class DbClaims(Claims):
    """Claims in a table of the database at `url` (a SQLAlchemy URL; see the module docstring)."""

    def __init__(self, url: str, split: str, heartbeat_seconds: float = HEARTBEAT_SECONDS, shown: str = ""):
        import sqlalchemy
        import sqlalchemy.exc

        self.split, self.heartbeat_seconds, self.owner = split, heartbeat_seconds, owner_name()
        self.where = f"the claims table in {shown or url}"
        try:
            self.engine = sqlalchemy.create_engine(url, **engine_options(url))
        except (ImportError, sqlalchemy.exc.ArgumentError, ValueError) as err:
            raise unusable_url(shown or url, err) from None
        metadata = sqlalchemy.MetaData()
        self.table = _table(metadata)
        for attempt in range(ATTEMPTS):
            try:
                metadata.create_all(self.engine)
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError) as err:
                # Two workers creating the table at once: the loser retries and finds it.
                if attempt == ATTEMPTS - 1 or (isinstance(err, sqlalchemy.exc.OperationalError)
                                               and "already exists" not in str(err)):
                    raise CompError(f"--storage {shown or url}: cannot open it ({one_line(getattr(err, 'orig', err))});"
                                    " check the server, the address and the credentials") from None
                time.sleep(0.5 + random.random())

    @contextlib.contextmanager
    def _reaching(self):
        """A database that stops answering mid-run: one line, not a traceback; what was trained is kept."""
        import sqlalchemy.exc

        try:
            yield
        except sqlalchemy.exc.OperationalError as err:
            raise CompError(f"{self.where}: the database stopped answering ({one_line(getattr(err, 'orig', err), 200)});"
                            " the folds trained so far are kept: rerun the same command when it is back") from None

    def _key(self, run: str, unit: str, index: int) -> dict:
        return {"run": run, "split": self.split, "unit": unit, "number": index}

    def _now(self, connection) -> dt.datetime:
        from sqlalchemy import func, select

        return _aware(connection.execute(select(func.current_timestamp())).scalar())

    def _row(self, connection, key: dict):
        from sqlalchemy import select

        return connection.execute(select(self.table).where(*[self.table.c[k] == v for k, v in key.items()])).first()

    def _holder(self, row, now: dt.datetime) -> Holder:
        beat = _aware(row.heartbeat)
        state = row.state
        silent = (now - beat).total_seconds() if beat is not None else 0.0
        if state == TRAINING and silent > GRACE_FACTOR * row.interval + CLOCK_SLACK:
            state = STALE
        return Holder(row.run, row.unit, row.number, state, row.owner, _aware(row.since), beat)

    def claim(self, run, unit, index, redo_before=None):
        with self._reaching():
            return self._claim(run, unit, index, redo_before)

    def _claim(self, run, unit, index, redo_before):
        import sqlalchemy.exc
        from sqlalchemy import func, insert, update

        key = self._key(run, unit, index)
        mine = {"state": TRAINING, "owner": self.owner, "since": func.current_timestamp(),
                "heartbeat": func.current_timestamp(), "interval": float(self.heartbeat_seconds)}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(self.table).values(**key, **mine, beats=0))
            return DbClaim(self, key, self.owner)
        except sqlalchemy.exc.IntegrityError:
            pass  # claimed before, by someone
        with self.engine.begin() as connection:
            row = self._row(connection, key)
            if row is None:
                return None  # deleted in between: the next pass inserts it
            held = self._holder(row, self._now(connection))
            redo = (held.state == DONE and redo_before is not None and held.heartbeat is not None
                    and held.heartbeat < redo_before)
            if held.state not in (FREE, STALE) and not redo:
                return None
            # Only if nobody changed the row since it was read: of two workers taking it over, one wins.
            taken = connection.execute(update(self.table).where(
                *[self.table.c[k] == v for k, v in key.items()], self.table.c.owner == row.owner,
                self.table.c.beats == row.beats).values(**mine, beats=row.beats + 1)).rowcount == 1
        if taken and held.state == STALE:
            silent = (self.now() - held.heartbeat).total_seconds()
            warn(f"{unit} {index} of run {run}: its worker {held.owner} has been silent {silent:.0f}s "
                 "(died?); taking it over")
        return DbClaim(self, key, self.owner) if taken else None

    def now(self) -> dt.datetime:
        with self._reaching(), self.engine.connect() as connection:
            return self._now(connection)

    def holder(self, run, unit, index):
        key = self._key(run, unit, index)
        with self._reaching(), self.engine.connect() as connection:
            row = self._row(connection, key)
            return Holder(run, unit, index, FREE) if row is None else self._holder(row, self._now(connection))

    def holders(self):
        from sqlalchemy import select

        with self._reaching(), self.engine.connect() as connection:
            now = self._now(connection)
            rows = connection.execute(select(self.table).order_by(
                self.table.c.run, self.table.c.unit, self.table.c.number)).all()
        return [self._holder(row, now) for row in rows if row.state != FREE]

    def close(self) -> None:
        self.engine.dispose()
