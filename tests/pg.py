"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp folder, on a free local port.

The server binaries come from Debian's `postgresql` package (.ci/postgres.sh installs it).
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user that
the package creates. `start()` returns None with the reason when no server can be started, so
a test can skip saying why instead of failing on a machine without PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # the account Debian's package creates; used only when we are root
DATABASE = "optuna"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


@dataclass
class Server:
    root: Path
    port: int
    prefix: list[str]  # runs a command as the server's user
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://comp@127.0.0.1:{self.port}/{DATABASE}"

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian keeps them off PATH, per major version."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_prefix() -> tuple[list[str] | None, str]:
    if os.geteuid() != 0:
        return [], ""
    try:
        import pwd

        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None, f"running as root and there is no {SERVER_USER!r} user to run the server as"
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SERVER_USER, "--"], ""
    return None, "running as root and runuser is missing"


def start() -> tuple[Server | None, str]:
    """(server, "") or (None, why not)."""
    try:
        import psycopg2  # noqa: F401 -- Optuna's PostgreSQL storage needs the driver
    except ImportError:
        return None, "psycopg2 is not installed (pip install psycopg2-binary)"
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, "no PostgreSQL server binaries (initdb); run .ci/postgres.sh to install them"
    prefix, why = _user_prefix()
    if prefix is None:
        return None, why
    root = Path(tempfile.mkdtemp(prefix="comp-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
    port = _free_port()
    server = Server(root, port, prefix, bin_dir)
    steps = [
        # trust auth on a private, local-only server; --no-sync: the data is thrown away anyway.
        [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "comp", "-A", "trust", "--no-sync", "-E", "UTF8"],
        [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
         "-t", str(START_TIMEOUT), "-o",
         f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=50", "start"],
        [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "comp", DATABASE],
    ]
    for step in steps:
        done = subprocess.run([*prefix, *step], capture_output=True, text=True, timeout=START_TIMEOUT + 30)
        if done.returncode != 0:
            log = (root / "server.log").read_text()[-500:] if (root / "server.log").exists() else ""
            server.stop()
            return None, f"{Path(step[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]} {log}"
    return server, ""
