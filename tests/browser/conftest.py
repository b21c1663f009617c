"""A real server (Daphne, the embedded default: SQLite, in-memory layer, inline tasks) and headless Chromium.

Chromium is Debian's (/usr/bin/chromium, `make browser-deps` installs it): Playwright's own browser downloads do not
work here. The server runs in its own process on a free loopback port with its own database file, so a test can
stop and start it (a restart keeps the data, like a deploy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.procs import HOST, ROOT, VENV_BIN, Proc, free_port, port_accepts, start, wait_until

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PASSWORD = "browser-test-password-1"


@dataclass
class InboxServer:
    port: int
    env: dict[str, str]
    tmp: Path
    data: dict[str, Any] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Daphne as `make run` starts it. After a stop the same port is reused at once: the old server's closed
        connections linger in TIME_WAIT, which Daphne's listening socket (SO_REUSEADDR) does not mind."""
        argv = [str(VENV_BIN / "daphne"), "-b", HOST, "-p", str(self.port), "--websocket-max-message-size", "65536"]
        proc = start("daphne", [*argv, "config.asgi:application"], env=self.env, log_dir=self.tmp)
        wait_until(proc, lambda: port_accepts(self.port), timeout=30, what=f"listening on {self.port}")
        self.proc = proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def inbound(self, conversation: str, text: str, *, local: bool = False) -> None:
        """A customer's message in one of the seeded conversations ("acme", "globex", "history"), through the
        signed webhook (or, with local, straight into the database while the server is down)."""
        where = ["--local"] if local else ["--url", f"{self.url}/webhooks/whatsapp/"]
        contact = self.data[conversation]
        tenant = contact["tenant"]
        self.manage(
            "simulate_inbound",
            "--tenant",
            tenant,
            "--from",
            contact["wa_id"],
            "--name",
            contact["contact"],
            *where,
            text,
        )


def _chromium_or_skip() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"Chromium not found at {CHROMIUM}: run `make browser-deps` (apt-get install chromium)"
    if os.environ.get("CI") or os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InboxServer]:
    tmp = tmp_path_factory.mktemp("browser-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    for key in ("DATABASE_URL", "REDIS_URL", "CHANNEL_LAYER_PREFIX", "SQLITE_TEST_PATH", "REQUIRE_SERVICES"):
        env.pop(key, None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.browser.server_settings",
            "DEBUG": "True",
            "SQLITE_PATH": str(tmp / "db.sqlite3"),
            "MEDIA_ROOT": str(tmp / "media"),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
            "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{port}/webhooks/whatsapp/",
            "BROWSER_TEST_PASSWORD": PASSWORD,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    inbox_server = InboxServer(port=port, env=env, tmp=tmp)
    inbox_server.manage("migrate", "--noinput", "-v", "0")
    seeded = subprocess.run(
        [sys.executable, "-m", "tests.browser.seed"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert seeded.returncode == 0, seeded.stderr
    inbox_server.data = json.loads(seeded.stdout.strip().splitlines()[-1])
    inbox_server.start()
    yield inbox_server
    inbox_server.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    _chromium_or_skip()
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Agent:
    page: Page
    errors: list[str]

    def close(self) -> None:
        self.page.context.close()


@pytest.fixture
def login(server: InboxServer, browser: Browser) -> Iterator[Any]:
    """login("alice") → an Agent whose page is that user's inbox with a live WebSocket."""
    agents: list[Agent] = []

    def _login(username: str, *, viewport: dict[str, int] | None = None) -> Agent:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, base_url=server.url)
        context.set_default_timeout(15_000)
        page = context.new_page()
        agent = Agent(page=page, errors=[])
        page.on("pageerror", lambda exc: agent.errors.append(str(exc)))
        # The project's Content-Security-Policy is on (settings.CONTENT_SECURITY_POLICY): a violation fails the test.
        page.on(
            "console",
            lambda msg: agent.errors.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/t/**")
        expect(page.locator("#conn-badge")).to_have_text("Live")
        agents.append(agent)
        return agent

    yield _login
    for agent in agents:
        try:
            assert agent.errors == [], f"JavaScript errors: {agent.errors}"
        finally:
            agent.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
