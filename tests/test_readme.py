"""Every shell and Python block of README.md, run in order, as a newcomer would type them.

The info-string convention (documented in the README's "The README is tested"):
``sh``/``python`` blocks run and must succeed; ``sh background ready=URL`` starts a server
and waits for ``URL``; ``sh skip`` is not run. Shell blocks share one environment and
working directory, as in one terminal. The ports 8787 and 8788 become free ports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e.harness import free_port, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
BLOCK_TIMEOUT_S = 60
READY_TIMEOUT_S = 30
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int
    language: str  # "sh" or "python"
    mode: str  # "run", "background" or "skip"
    ready: str | None
    code: str


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks: list[Block] = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        language = RUN_LANGUAGES.get(words[0] if words else "")
        if language is None:
            continue
        line = text.count("\n", 0, match.start()) + 1
        attrs = words[1:]
        mode, ready = "run", None
        for attr in attrs:
            if attr in ("skip", "background"):
                mode = attr
            elif attr.startswith("ready=") and language == "sh":
                ready = attr.removeprefix("ready=")
            else:
                raise AssertionError(f"README.md:{line}: unknown block attribute {attr!r}")
        if mode == "background" and ready is None:
            raise AssertionError(f"README.md:{line}: a background block needs ready=URL")
        blocks.append(Block(line, language, mode, ready, match.group(2)))
    return blocks


def test_the_convention_is_kept() -> None:
    blocks = readme_blocks()
    assert sum(b.mode == "run" for b in blocks) >= 8
    assert all(b.mode != "skip" or b.language == "sh" for b in blocks)


class Terminal:
    """One shell session's environment and directory, carried from block to block."""

    def __init__(self, workdir: Path, ports: dict[str, str]) -> None:
        self.cwd = workdir
        self.ports = ports
        venv_bin = str(ROOT / ".venv" / "bin")
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin]
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("VIRTUAL_ENV", "WATTFARE_CONFIG", "OPENROUTER_API_KEY")}
        self.env["PATH"] = os.pathsep.join(path)
        self.output: list[str] = []
        self.servers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def text(self, code: str) -> str:
        for old, new in self.ports.items():
            code = code.replace(old, new)
        return code

    def run(self, block: Block) -> None:
        state = self.cwd / ".readme-state"
        if block.language == "sh":
            script = (f"{self.text(block.code)}\n"
                      f'env -0 > "{state}.env"; pwd > "{state}.cwd"\n')
            argv = ["bash", "-euo", "pipefail", "-c", script]
            stdin = None
        else:
            python = shutil.which("python", path=self.env["PATH"])
            assert python, "no python on the PATH"
            argv, stdin = [python, "-W", "error", "-"], self.text(block.code)
        done = subprocess.run(argv, input=stdin, cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                              check=False)
        self.output.append(done.stdout)
        assert done.returncode == 0, (
            f"README.md:{block.line} failed ({done.returncode}):\n{block.code}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\n{self.server_logs()}"
        )
        if block.language == "sh":
            raw = Path(f"{state}.env").read_text()
            self.env = dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)
            self.cwd = Path(Path(f"{state}.cwd").read_text().strip())

    def start(self, block: Block) -> None:
        assert block.ready is not None
        log = self.cwd / f".readme-server-{len(self.servers)}.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", "exec " + self.text(block.code).strip()],
                cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append((server, log))
        url = self.text(block.ready)
        assert wait_until(lambda: server.poll() is None and _answers(url),
                          timeout=READY_TIMEOUT_S), (
            f"README.md:{block.line}: {url} did not answer\n{log.read_text()}"
        )

    def server_logs(self) -> str:
        return "\n".join(f"server log:\n{log.read_text()[-3000:]}" for _, log in self.servers)

    def stop(self) -> None:
        for server, _ in reversed(self.servers):
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)  # the group this test started
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    ports = {"8787": str(free_port()), "8788": str(free_port())}
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(ROOT / ".venv")
    example = (ROOT / "config.example.toml").read_text()
    for old, new in ports.items():
        example = example.replace(old, new)
    (clone / "config.example.toml").write_text(example)
    term = Terminal(clone, ports)
    try:
        yield term
    finally:
        term.stop()


def test_every_block_runs_as_typed(terminal: Terminal) -> None:
    for block in readme_blocks():
        if block.mode == "skip":
            continue
        if block.mode == "background":
            terminal.start(block)
        else:
            terminal.run(block)
    out = "".join(terminal.output)
    assert "data: [DONE]" in out and '"cost":' in out  # the curl stream and its usage
    assert "charged $" in out  # the SDK's stream and its usage chunk
    assert "402 spend_cap_reached" in out
    assert "total" in out  # the usage report
