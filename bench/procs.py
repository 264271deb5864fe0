"""Processes the bench starts: each on loopback, each stopped by its own PID.

Nothing here signals a process the bench did not start: ``Proc.stop`` sends SIGTERM to the
PID it launched, waits, and only then SIGKILLs that PID and the children psutil lists
under it (uvicorn's workers, say).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class StartError(RuntimeError):
    """A process that exited or never answered; the message says which, with its log tail."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, *, timeout_s: float) -> None:
        """Poll ``url`` until it answers any HTTP status; raise StartError otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with {self.popen.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answered, with an error status: it is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise StartError(
            f"{self.name} did not answer {url} in {timeout_s:.0f} s: {self.log_tail()}"
        )

    def tree(self) -> list[psutil.Process]:
        """This process and its descendants (uvicorn workers), those still alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_bytes(self) -> int:
        """Resident set size of the process tree (the supervisor included, if any)."""
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_info().rss)
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process tree so far."""
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def foreign_connections(self) -> list[str]:
        """Remote addresses off loopback that the process tree has open right now."""
        found: list[str] = []
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections(kind="inet"):
                    if conn.raddr and not _is_loopback(conn.raddr.ip):
                        found.append(f"{conn.raddr.ip}:{conn.raddr.port}")
        return found

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self.alive():
            children = self.tree()[1:]
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                for child in children:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class ProcGroup(Proc):
    """Several processes measured as one path (gateway nodes sharing a database): their
    CPU, memory and liveness together. ``companions`` (the database server) are not
    counted, only stopped with them, after them."""

    members: list[Proc] = field(default_factory=list)
    companions: list[Proc] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, members: Sequence[Proc], *,
           companions: Sequence[Proc] = ()) -> ProcGroup:
        first = [*members, *companions][0]
        return cls(name=name, popen=first.popen, log_path=first.log_path, port=first.port,
                   members=list(members), companions=list(companions))

    def alive(self) -> bool:
        return bool(self.members) and all(m.alive() for m in self.members)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(f"[{p.name}] {p.log_tail(lines)}"
                         for p in [*self.members, *self.companions])

    def wait_http(self, url: str, *, timeout_s: float) -> None:
        for member in self.members:  # each on its own port
            own = url if member.port is None or self.port is None else url.replace(
                f":{self.port}/", f":{member.port}/", 1)
            member.wait_http(own, timeout_s=timeout_s)

    def tree(self) -> list[psutil.Process]:
        return [p for member in self.members for p in member.tree()]

    def stop(self, *, timeout_s: float = 10.0) -> None:
        for proc in [*self.members, *self.companions]:
            proc.stop(timeout_s=timeout_s)


def wait_idle(
    procs: Sequence[Proc], *, below: float = 0.1, window_s: float = 0.15, timeout_s: float = 30.0
) -> float:
    """Wait until ``procs`` together use under ``below`` of a core; return the seconds waited.

    A path that kept working on requests its client abandoned (LiteLLM does) would
    otherwise steal the CPU of the next path's measurement.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = sum(p.cpu_seconds() for p in procs)
        time.sleep(window_s)
        if (sum(p.cpu_seconds() for p in procs) - before) / window_s < below:
            break
    return time.monotonic() - start


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith(
        "::ffff:127."
    )


def start(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
) -> Proc:
    """Launch ``argv`` with its output in ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    return Proc(name=name, popen=popen, log_path=log_path, port=port, _log=log)


class LineChannel:
    """JSON lines to and from a child process (the load generator), bounded in time."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is None or proc.stdout is None:
            raise ValueError("the process needs stdin and stdout pipes")
        self._proc = proc
        self._stdin = proc.stdin
        self._fd = proc.stdout.fileno()
        self._buffer = b""

    def send(self, obj: Mapping[str, Any]) -> None:
        self._stdin.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        self._stdin.flush()

    def receive(self, *, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the load generator in {timeout_s:.0f} s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 1 << 20)
                if not chunk:
                    raise EOFError(f"the load generator exited ({self._proc.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, obj: Mapping[str, Any], *, timeout_s: float) -> dict[str, Any]:
        self.send(obj)
        answer = self.receive(timeout_s=timeout_s)
        if not answer.get("ok", False):
            raise RuntimeError(f"load generator: {answer.get('error')}")
        return answer


def stop_loadgen(loadgen: subprocess.Popen[bytes]) -> None:
    """Ask the load generator to quit; kill it if it does not within 10 s."""
    with contextlib.suppress(OSError, ValueError):
        LineChannel(loadgen).send({"op": "quit"})
    try:
        loadgen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        loadgen.kill()
        loadgen.wait(timeout=10)
