"""A real PostgreSQL server for the tests, from the system's package (Debian: apt-get install postgresql):
initdb in a temporary folder, listening on 127.0.0.1 at a free port with trust authentication, one
database; stopped at the end. Skipped, with the reason, where the binaries or the driver are absent.

initdb refuses to run as root: as root, the server runs as the `postgres` OS user the package creates."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_stop_commands: dict[str, list[str]] = {}  # URL -> the command that stops its server


def stop_server(url: str) -> None:
    """Stops the server at once (as a crash or a restart would, to the clients)."""
    subprocess.run(_stop_commands[url], check=True, capture_output=True)


def server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "search"):
    """Yields postgresql://USER@127.0.0.1:PORT/DATABASE of a fresh server."""
    binaries = server_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install '.[postgres]' (psycopg 3)")
    as_user: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` OS user to run the server as")
        as_user, user = ["runuser", "-u", "postgres", "--"], "postgres"
    folder = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = lambda *argv: subprocess.run([*as_user, *map(str, argv)], check=True, capture_output=True, text=True)
    try:
        run(binaries / "initdb", "-D", data, "-A", "trust", "-U", user, "--no-sync")
        run(binaries / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "start",
            "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=100")
    except subprocess.CalledProcessError as error:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr or error.stdout}{log}") from None
    try:
        run(binaries / "createdb", "-h", "127.0.0.1", "-p", port, "-U", user, database)
        url = f"postgresql://{user}@127.0.0.1:{port}/{database}"
        _stop_commands[url] = [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        yield url
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
