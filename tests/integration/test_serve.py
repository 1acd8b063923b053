"""`loradeck serve` in a real browser: headless Chromium driven over the DevTools protocol opens the printed URL,
gets Home, opens a live run's monitor and presses `s` — the save command reaches the run. Without the token every
address is refused. Skips where no Chromium is installed (Debian: `apt install chromium`)."""

import asyncio
import json
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest

from tests.integration.test_train_cli import LORADECK
from tests.conftest import REPO
from tests.ports import free_port, wait_for_port
from tests.tui.test_monitor import live_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def status_of(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate, type keys."""

    def __init__(self, http, socket_):
        self.http, self.ws, self.next_id = http, socket_, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                return message.get("result", {})

    async def key(self, key: str, code: int, text: str = "") -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                            **({"text": text} if text and kind == "keyDown" else {}))


@pytest.fixture
def served(tmp_path):
    runs = tmp_path / "runs"
    run_dir = live_run(tmp_path)  # a run whose trainer is this test process: controls are accepted
    port = free_port()
    server = subprocess.Popen([*LORADECK, "--runs-dir", str(runs), "serve", "--port", str(port)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
    assert match, line + server.stderr.read()
    try:
        wait_for_port(port)
        yield match.group(1), match.group(2), run_dir
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_without_the_token_every_address_is_refused(served):
    base, token, _ = served
    assert status_of(base) == 403
    assert status_of(base + "?token=" + "x" * len(token)) == 403
    assert status_of(base + "static/js/textual.js") == 403
    assert status_of(base + "?token=" + token) == 200


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt install chromium)")
def test_a_headless_browser_opens_home_then_the_monitor_and_its_save_reaches_the_run(served):
    import aiohttp

    base, token, run_dir = served

    async def scenario():
        port = free_port()
        profile = tempfile.mkdtemp()
        browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                    f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                    "--window-size=1280,800", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    try:
                        targets = await (await http.get(f"http://127.0.0.1:{port}/json")).json()
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                page = next(target for target in targets if target["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket_:
                    tab = Browser(http, socket_)
                    await tab.call("Page.navigate", url=f"{base}?token={token}")
                    for _ in range(120):  # the page's terminal appears once the app has started
                        await asyncio.sleep(0.5)
                        found = await tab.call("Runtime.evaluate", returnByValue=True, expression=(
                            "(() => { const t = document.querySelector('.xterm-helper-textarea');"
                            " if (t) { t.focus(); return true; } return false; })()"))
                        if found.get("result", {}).get("value"):
                            break
                    await asyncio.sleep(4.0)  # Home draws and selects the run
                    await tab.key("Enter", 13, "\r")  # open the run's monitor
                    await asyncio.sleep(3.0)
                    await tab.key("s", 83, "s")  # save now
                    for _ in range(100):
                        commands = [json.loads(p.read_text())["command"] for p in (run_dir / "control").glob("*.json")]
                        if commands:
                            return commands
                        await asyncio.sleep(0.2)
                    return []
        finally:
            browser.terminate()
            browser.wait(timeout=20)
            shutil.rmtree(profile, ignore_errors=True)

    assert asyncio.run(scenario()) == ["save"]


def test_a_busy_port_is_one_line_and_no_url_is_printed():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run([*LORADECK, "serve", "--port", str(port)], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2 and "token=" not in result.stdout
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and "address already in use" in error.lower()
