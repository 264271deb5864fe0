"""Fixtures of the browser suite: one stack of real processes for the session, the
system Chromium driven by Playwright, a fresh browser context per test, and screenshots
of each page state in ``tests/artifacts/``.

The screenshots the README and docs show (``docs/screenshots/``) are taken by the same
tests: ``WATTFARE_DOCS_SCREENSHOTS=1 .venv/bin/pytest tests/e2e_browser`` rewrites them,
and an ordinary run leaves them alone. Where Debian's ``pngquant`` is installed, those
copies are reduced to 256 colours (a third of the size, no visible change).

Chromium comes from the OS (Debian: ``apt-get install -y chromium``); Playwright's own
browser download is never used. Without it these tests fail under CI (``CI=true``) and
are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .harness import Stack, start_stack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.browser


def _chromium() -> str:
    found = os.environ.get("WATTFARE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if os.path.exists(found):
        return found
    reason = (
        "the browser tests need Debian's Chromium at /usr/bin/chromium "
        "(apt-get install -y chromium) and the playwright package"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("browser-stack"))
    try:
        yield s
    finally:
        s.processes.close()


# Module scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is open, and the asyncio tests collected after this folder need none.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the playwright package is missing (pip install playwright)")
        pytest.skip("the playwright package is missing (pip install playwright)")
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh, temporary user data dir of its own.
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1100, "height": 860})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def shot() -> Callable[[Page, str], None]:
    """Save a screenshot of a page state to tests/artifacts/<name>.png; ``docs=True``
    also to docs/screenshots/ when WATTFARE_DOCS_SCREENSHOTS=1."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    update_docs = os.environ.get("WATTFARE_DOCS_SCREENSHOTS") == "1"

    def save(page: Page, name: str, *, docs: bool = False, **options: Any) -> None:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), **options)
        if docs and update_docs:
            target = DOCS_SCREENSHOTS / f"{name}.png"
            pngquant = shutil.which("pngquant")
            if pngquant is None:
                shutil.copyfile(path, target)
            else:
                subprocess.run(
                    [pngquant, "--force", "--skip-if-larger", "--output", str(target),
                     "256", str(path)],
                    check=False, timeout=60,
                )

    return save


@pytest.fixture
def browser_context_factory(browser: Browser) -> Iterator[Callable[[], BrowserContext]]:
    """More contexts (separate cookie jars) for one test; closed after it."""
    made: list[BrowserContext] = []

    def make() -> BrowserContext:
        ctx = browser.new_context(viewport={"width": 1100, "height": 860})
        ctx.set_default_timeout(15_000)
        made.append(ctx)
        return ctx

    try:
        yield make
    finally:
        for ctx in made:
            ctx.close()
