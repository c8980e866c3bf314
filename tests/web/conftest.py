"""Fixtures for the web app: a SQLite workspace with prompts and sampled responses from two
policies, three accounts (alice and bob label, root administers), the app in-process
(starlette's TestClient) and live under uvicorn on a free loopback port (for the browser tests)."""

from __future__ import annotations

import os
import socket
import threading
import time
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for websupport (the tests import it by name)

from websupport import PASSWORD, add_accounts, seed  # noqa: E402


@pytest.fixture
def web_ws(tmp_path):
    """(workspace, store) seeded with samples and accounts."""
    from tether.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    store = ws.store()
    seed(store)
    add_accounts(store)
    yield ws, store
    store.close()


@pytest.fixture
def app(web_ws):
    from tether.web import WebSettings, create_app

    ws, store = web_ws
    return create_app(ws.root, store=store, settings=WebSettings(timeout_s=900))


@pytest.fixture
def client_for(app):
    """client_for(name) -> a logged-in TestClient and its CSRF token; client_for(None) -> anonymous."""
    from fastapi.testclient import TestClient

    clients = []

    def make(name: str | None):
        c = TestClient(app, follow_redirects=False)
        clients.append(c)
        if name is None:
            return c, None
        r = c.post("/api/login", json={"name": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return c, r.json()["csrf_token"]

    yield make
    for c in clients:
        c.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app):
    """The app under uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright; skipped when missing (a failure on CI)."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem is None and not Path(CHROMIUM).exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TETHER_CHROMIUM)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


SHOT_VIEWPORT = {"width": 1000, "height": 700}


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where the browser tests save their screenshots: $TETHER_SCREENSHOTS (e.g. docs/screenshots),
    else a folder in pytest's temporary directory."""
    given = os.environ.get("TETHER_SCREENSHOTS")
    path = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshot(screenshot_dir):
    """screenshot(page, name) -> the PNG of what the page shows, at desktop size (1000x700, not the
    full page), saved as <screenshot_dir>/<name>.png; the page's own size is restored afterwards."""

    def take(page, name: str) -> Path:
        before = page.viewport_size
        page.set_viewport_size(SHOT_VIEWPORT)
        page.wait_for_load_state("load")
        page.evaluate("document.fonts.ready.then(() => true)")
        path = screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide")
        if before:
            page.set_viewport_size(before)
        return path

    return take


@pytest.fixture
def page(browser, live_server):
    """A fresh browser context (own cookies) whose requests may only go to the live server."""
    ctx = browser.new_context(base_url=live_server)
    ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_server) else route.abort())
    p = ctx.new_page()
    p.set_default_timeout(10_000)
    yield p
    ctx.close()
