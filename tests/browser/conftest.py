"""Browser tests: Playwright driving Debian's Chromium (headless, never a downloaded browser)
against a real `python run.py serve` subprocess on a free port, with a fresh database per test.

`make test` installs /usr/bin/chromium when it is missing (as root, with apt-get). Where it cannot,
these tests are skipped with a warning at the start and the end of the run — except under CI
(`CI` set), where a missing browser is an error: there they must run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.accounts import PASSWORD
from helpers.server import REPO, ServerProcess, write_config

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SCREENSHOTS = REPO / "test-output" / "screenshots"
# Playwright's waits (expect, wait_for_*), in milliseconds.
WAIT_MS = 10_000


def _why_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (requirements-dev.txt)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"{CHROMIUM} is missing: `make test` installs it with apt-get when run as root; "
                "otherwise `apt-get install chromium`")
    return None


MISSING = _why_missing()
WARNING = (f"BROWSER TESTS {'FAIL' if os.environ.get('CI') else 'SKIPPED'}: {MISSING}"
           if MISSING else None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING:
        return
    # This conftest loads during collection, after the report header: say it at once, loudly.
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("!", WARNING, red=True, bold=True)
    if os.environ.get("CI"):
        return  # CI must run them: the `browser` fixture fails instead
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=WARNING))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if WARNING:
        terminalreporter.write_sep("!", WARNING, red=True, bold=True)


# -- the server under test ----------------------------------------------------------------


@pytest.fixture
async def live(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ServerProcess]:
    """A serving `run.py serve` on a fresh database; a test may `stop()` and `start()` it again
    on the same port and data. No traceback may appear in its output. A test may change
    `[limits]` keys with `@pytest.mark.parametrize("live", [{KEY: VALUE}], indirect=True)`."""
    # Fast hashing; a rate limit no test reaches.
    limits = {"messages_per_second": 500.0, **getattr(request, "param", {})}
    config = write_config(tmp_path / "config.toml", {"security": {"bcrypt_rounds": 4},
                                                     "limits": limits})
    server = ServerProcess(tmp_path / "chat.db", config, tmp_path).start()
    try:
        await server.wait_serving()
        yield server
    finally:
        server.kill()
    assert "Traceback" not in server.output(), server.output()


# -- the browser --------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if MISSING:
        pytest.fail(f"CI must run the browser tests: {MISSING}")
    from playwright.async_api import async_playwright, expect
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@dataclass
class User:
    """A person with their own browser profile (context), logged in."""

    phone: str
    name: str
    context: object
    problems: list[str]

    async def page(self, path: str = "/chat", ready: bool = True) -> object:
        """A new tab on `path`; with `ready`, once the client has started (its history loaded)."""
        page = await self.context.new_page()
        _watch(page, self.problems)
        await page.goto(self.context.base + path)
        if ready:
            await page.locator("body.ready").wait_for(timeout=WAIT_MS)
        return page


# Console errors a test causes on purpose: the server is down, or was refused a socket.
_EXPECTED = ("WebSocket connection to", "Failed to load resource", "net::ERR_CONNECTION_REFUSED")


def _watch(page: object, problems: list[str]) -> None:
    """Collect uncaught errors and console errors (CSP violations are reported there)."""
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))

    def on_console(msg: object) -> None:
        if msg.type == "error" and not any(e in msg.text for e in _EXPECTED):
            problems.append(f"console error: {msg.text}")
    page.on("console", on_console)


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
async def people(browser: object, live: ServerProcess) -> AsyncIterator[UserFactory]:
    """`await people(phone, name, **context options)` -> a registered, logged-in User."""
    made: list[User] = []

    async def make(phone: str, name: str, register: bool = True, **options: object) -> User:
        options.setdefault("viewport", {"width": 1200, "height": 760})
        context = await browser.new_context(**options)
        context.base = live.base
        user = User(phone, name, context, [])
        made.append(user)
        if register:
            resp = await context.request.post(
                live.url("/register"), form={"phone": phone, "name": name, "password": PASSWORD},
                max_redirects=0)
            assert resp.status == 302, await resp.text()
        return user

    yield make
    problems = [p for u in made for p in u.problems]
    for user in made:
        await user.context.close()
    assert not problems, "\n".join(problems)


async def screenshot(page: object, name: str) -> Path:
    """Save a screenshot under test-output/screenshots/ (look at them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path
