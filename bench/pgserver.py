"""A throwaway PostgreSQL cluster: made from the system's PostgreSQL binaries (Debian's
``postgresql`` package, which ``./run`` installs) in a temporary folder, listening on a
free loopback port, and stopped by its PID at the end. The tests use one when
``WATTFARE_TEST_DATABASE_URL`` names no server; the bench always starts its own, so that
the database server's CPU can be counted.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

URL_ENV = "WATTFARE_TEST_DATABASE_URL"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def _bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are (newest version first), if anywhere."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists() and (path / "postgres").exists():
            return path
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` user there."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass(frozen=True)
class Cluster:
    url: str  # database "postgres", trust authentication
    server: subprocess.Popen[bytes]  # the postmaster (or runuser in front of it)
    data: Path
    log: Path

    def stop(self) -> None:
        _stop(self.server, self.data)


# For tests: nothing to keep through a power loss.
TEST_SETTINGS = {"fsync": "off"}
# For the bench: fsync on, commits acknowledged before their WAL is flushed (flushed
# within 3 × wal_writer_delay, 600 ms): the same promise as the SQLite store's
# synchronous=NORMAL, which the PostgreSQL paths are compared with. A crash of the
# gateway loses nothing either way; a power loss of the database machine may lose the
# last commits, never consistency. Production keeps PostgreSQL's default (on): see the
# README, "Running in production".
BENCH_SETTINGS = {"synchronous_commit": "off"}


def start_cluster(
    folder: Path,
    *,
    settings: dict[str, str] | None = None,
    listen: tuple[str, ...] = (),
    trusted: tuple[str, ...] = (),
) -> Cluster:
    """A fresh cluster in ``folder``, running, with these server ``settings`` over
    PostgreSQL's defaults.

    It listens on 127.0.0.1 and on the ``listen`` addresses too, and trusts connections
    from the ``trusted`` networks (CIDR) besides loopback's: the multi-host tests reach it
    from network namespaces of their own (:mod:`tests.netns`).
    """
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL binaries: install Debian's 'postgresql' package "
            f"(./run does) or set {URL_ENV}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True,
    )
    if trusted:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trusted)
    port = _free_port()
    log = folder / "server.log"
    addresses = ",".join(("127.0.0.1", *listen))
    options = ["-c", f"listen_addresses={addresses}", "-c", "max_connections=200"]
    for key, value in (settings or {}).items():
        options += ["-c", f"{key}={value}"]
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            _as_postgres([str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                          "-k", str(folder), *options]),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    cluster = Cluster(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", server=server,
                      data=data, log=log)
    try:
        _wait_ready(bindir, port, server, log)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def throwaway_cluster(
    *,
    settings: dict[str, str] | None = None,
    listen: tuple[str, ...] = (),
    trusted: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    """:func:`start_cluster` in a temporary folder, stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="wattfare-pg-"))
    try:
        cluster = start_cluster(folder, settings=settings, listen=listen, trusted=trusted)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(bindir: Path, port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
            check=False,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the test PostgreSQL did not start:\n{log.read_text(errors='replace')}")


def _stop(server: subprocess.Popen[bytes], data: Path) -> None:
    """Fast shutdown of the postmaster, by its PID (``runuser`` forwards signals, so the
    PID file names the server itself)."""
    pid_file = data / "postmaster.pid"
    pid = server.pid
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        server.wait(timeout=STOP_TIMEOUT_S)
