"""Headless Debian chromium driven by Playwright (never a downloaded browser) against the real stack."""

import shutil
from pathlib import Path

import pytest

from tests.procs import ROOT, start_real_stack

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Playwright and chromium for one test module only: the sync API runs an event loop in this thread
    while it lives, so a later test's `asyncio.run()` would fail ("cannot be called from a running event
    loop") if it outlived the module."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing (make install adds Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def stack(redis_server, logs_dir, tmp_path_factory, detection_service):
    """A gateway and worker of the console's own (its keys start with no jobs) on the session's detection
    service."""
    s = start_real_stack(redis_server, tmp_path_factory.mktemp("data"), logs_dir, detection_service.url)
    yield s
    s.stop()


@pytest.fixture
def page(browser, stack, request):
    """A fresh browser context (own session storage) on the console; console errors are collected."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.console_errors = []
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def login(page, stack, key: str = "key-alice", tab: str = "") -> None:
    page.goto(f"{stack.url}/ui/{'#' + tab if tab else ''}")
    page.fill("#key-input", key)
    page.click("#key-submit")
    page.wait_for_selector("#key-dialog", state="hidden")


@pytest.fixture(autouse=True, scope="session")
def _fresh_artifacts():
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    yield
