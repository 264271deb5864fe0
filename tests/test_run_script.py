"""``./run``'s wait for a package manager that another install is using."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def apt_wait(lock: Path, *, timeout_s: int) -> subprocess.CompletedProcess[str]:
    """``apt_wait`` from ./run, on one lock file of our own."""
    return subprocess.run(
        ["bash", "-c", "RUN_LIBRARY_ONLY=1 source ./run && apt_wait"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "APT_LOCKS": str(lock), "APT_LOCK_TIMEOUT_S": str(timeout_s),
             "APT_LOCK_POLL_S": "0.1"},
    )


def test_a_free_lock_is_not_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    done = apt_wait(lock, timeout_s=5)
    assert done.returncode == 0 and done.stderr == ""


def test_a_held_lock_is_waited_for_with_a_message_and_a_bound(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # as dpkg holds it
        done = apt_wait(lock, timeout_s=1)
        assert done.returncode == 1
        assert "holds apt's lock; waiting" in done.stderr
        assert "still held after 1 s; giving up" in done.stderr

        # Released once the script says it waits: it then goes on by itself.
        waiting = subprocess.Popen(
            ["bash", "-c", "RUN_LIBRARY_ONLY=1 source ./run && apt_wait"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "APT_LOCKS": str(lock), "APT_LOCK_TIMEOUT_S": "60",
                 "APT_LOCK_POLL_S": "0.1"},
        )
        assert waiting.stderr is not None
        try:
            first = waiting.stderr.readline()
            fcntl.lockf(fd, fcntl.LOCK_UN)
            rest = waiting.stderr.read()
            code = waiting.wait(timeout=30)
        finally:
            waiting.stderr.close()
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(timeout=10)
    finally:
        os.close(fd)
    assert "waiting for it to finish" in first
    assert code == 0, rest
    assert "lock is free after" in rest
