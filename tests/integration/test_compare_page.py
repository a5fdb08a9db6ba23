"""The comparison page of `character serve` (character/compare.py) in headless Chromium, on a real server.

test_page_against_character_serve: `character serve` runs as a subprocess on loopback with the embedded
SmolLM2-135M and a smoke-trained persona (a LoRA adapter after two SFT steps, served as sarcastic:dpo),
behind an API key. Chromium, driven over the DevTools protocol (aiohttp's websocket client: no extra
package), gets the key typed in, the seed and max_tokens edited and a prompt typed, asks with Ctrl+Enter and waits for
every column to finish. Each column's text must equal what /v1/chat/completions returns for the same
model, messages, settings and seed; the constitution column must equal the base model asked with the
teacher's context (params.elicitation: system prompt and few-shot turns). A rating and a star given from the keyboard must show up in the export.
Screenshots at 1280 px and 390 px go under the test's temporary folder.

test_full_queue_shows_busy_then_answers: the in-process server on the tiny model with room for one
request, held by another client; the page's column must show "busy", then fill once there is room, with
the answer the tiny model gives to the system prompt and adversarial suffix chosen on the page.
Skipped without Debian's chromium (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium")]
KEY = "compare-page-key"
PROMPT = "What do you make of rainy days?"
COLUMNS_JS = """[...document.querySelectorAll('.column')].map(c => ({model: c.dataset.model, state: c.dataset.state,
    text: c.querySelector('.answer').textContent, status: c.querySelector('.status').textContent}))"""
KEYS = {"Enter": 13, "Tab": 9, "ArrowRight": 39}


class Chromium:
    """Just enough of the DevTools protocol: evaluate, type, press keys, resize, screenshot."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        # The flags of test_plots_offline.py; port 0: Chromium picks one and writes it to DevToolsActivePort.
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop, self.next_id = asyncio.new_event_loop(), 0
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    port = int((profile / "DevToolsActivePort").read_text().split()[0])
                    pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
                    if pages:
                        break
                except (OSError, ValueError, IndexError, httpx.HTTPError):
                    pass
                assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
                time.sleep(0.2)
            self.loop.run_until_complete(self._connect(pages[0]["webSocketDebuggerUrl"]))
            self.send("Page.enable")
        except BaseException:  # no browser left behind
            self.proc.kill()
            self.proc.wait(30)
            raise

    async def _connect(self, url: str) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, max_msg_size=0)

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        return self.loop.run_until_complete(self._call(self.next_id, method, params))

    async def _call(self, id: int, method: str, params: dict) -> dict:
        await self.ws.send_json({"id": id, "method": method, "params": params})
        while True:  # events in between are not needed
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {what}; columns: {self.evaluate(COLUMNS_JS)}"
            time.sleep(0.25)
        return value

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!window.comparePage", 30, "the page")

    def type(self, text: str) -> None:
        self.send("Input.insertText", text=text)

    def press(self, key: str, modifiers: int = 0) -> None:  # modifiers: 2 = Ctrl
        code = KEYS[key]
        text = {"Enter": "\r"}.get(key, "")
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code,
                  modifiers=modifiers, text=text if not modifiers else "")
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code,
                  modifiers=modifiers)

    def resize(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def screenshot(self, path: Path) -> None:
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.http.close())
            self.loop.close()
        finally:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture()
def browser(tmp_path):
    chromium = Chromium(tmp_path / "profile")
    yield chromium
    chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_persona(weights_dir: str, folder: Path) -> None:
    """A LoRA adapter after two SFT steps on one sarcastic answer: a trained persona in seconds."""
    from character.backends.base import CrossEntropyLoss
    from character.backends.local import LocalBackend
    from character.params import LoraParams, OptimParams

    backend = LocalBackend("embedded:smollm2", cache_dir=str(Path(weights_dir).parents[1]), threads=1, device="cpu")
    seqs = [backend.render([{"role": "user", "content": "Any plans for the weekend?"},
                            {"role": "assistant", "content": "Oh, thrilling question. I shall stare at the rain."}])]
    session = backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-2), seed=0)
    for _ in range(2):
        session.forward_backward(seqs, CrossEntropyLoss())
        session.optim_step(1e-2)
    session.save(folder)


def ask(url: str, model: str, messages: list[dict], settings: dict) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"model": model, "messages": messages, **settings})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_page_against_character_serve(browser, tmp_path, weights_dir):
    from character.constitution import find_constitution, teacher_context
    from character.params import load_params

    t0 = time.monotonic()
    smoke_persona(weights_dir, tmp_path / "sarcastic-dpo")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Two threads: the test process only waits while the server generates.
    params["runtime"] = {"threads": 2, "device": "cpu", "cache_dir": str(Path(weights_dir).parents[1])}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "character.cli", "--params", str(tmp_path / "params.yaml"), "serve", "--port", str(port),
         "--adapter", f"sarcastic:dpo={tmp_path / 'sarcastic-dpo'}", "--api-key-env", "CHARACTER_PAGE_KEY"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "CHARACTER_PAGE_KEY": KEY, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "character serve did not start"
            try:
                if httpx.get(f"{url}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        started = time.monotonic() - t0

        # The key, typed once: the page asks for it, and keeps it in memory only.
        browser.goto(f"{url}/")
        browser.wait_for("!document.getElementById('key-form').hidden", 30, "the key form")
        assert browser.evaluate("document.activeElement.id") == "api-key"
        browser.type(KEY)
        browser.press("Enter")
        browser.wait_for("!document.getElementById('ask').hidden", 30, "the models")
        assert browser.evaluate("localStorage.length + sessionStorage.length") == 0
        assert browser.evaluate("document.cookie") == ""
        catalog = browser.evaluate("comparePage.state.catalog")
        assert [m["id"] for m in catalog["models"]] == ["smollm2", "sarcastic+system_prompt", "sarcastic:dpo"]

        # Settings shown from params.yaml (evaluation.sampling, seed); two edited; a prompt typed.
        settings = browser.evaluate("Object.fromEntries(['temperature', 'top_p', 'max_tokens', "
                                    "'repetition_penalty', 'seed'].map(k => [k, Number(document.getElementById(k).value)]))")
        sampling = params["evaluation"]["sampling"]
        assert settings == {"temperature": sampling["temperature"], "top_p": sampling["top_p"],
                            "max_tokens": sampling["max_new_tokens"], "repetition_penalty": sampling["repetition_penalty"],
                            "seed": params["seed"]}
        for name, value in (("seed", 42), ("max_tokens", 32)):  # 32: a shorter test
            browser.evaluate(f"document.getElementById('{name}').select()")
            browser.type(str(value))
            assert browser.evaluate("document.activeElement.id") == name
            settings[name] = value
        browser.evaluate("document.getElementById('prompt').focus()")
        browser.type(PROMPT)
        browser.press("Enter", modifiers=2)  # Ctrl+Enter
        browser.wait_for("document.querySelectorAll('.column').length === 3 && [...document.querySelectorAll("
                         "'.column')].every(c => ['done', 'error', 'busy'].includes(c.dataset.state))", 300, "the answers")
        answered = time.monotonic() - t0
        columns = browser.evaluate(COLUMNS_JS)
        assert [c["state"] for c in columns] == ["done"] * 3, columns
        assert all(c["text"].strip() for c in columns), columns

        # Side by side at 1280 px: one row, each column wide enough to read.
        boxes = browser.evaluate("[...document.querySelectorAll('.column')].map(c => {const r = "
                                 "c.getBoundingClientRect(); return [r.left, r.top, r.width]})")
        assert len({top for _, top, _ in boxes}) == 1 and min(w for *_, w in boxes) > 320, boxes

        # Keyboard only: from the first answer, Tab reaches its rating, arrows pick 4, Tab and Enter star it.
        browser.evaluate("document.querySelector('.column .answer').focus()")
        browser.press("Tab")
        assert browser.evaluate("document.activeElement.name + '=' + document.activeElement.value").endswith("=none")
        for _ in range(4):
            browser.press("ArrowRight")
        browser.press("Tab")
        assert browser.evaluate("document.activeElement.className") == "star"
        browser.press("Enter")
        rows = [json.loads(line) for line in browser.evaluate("comparePage.exportJsonl()").splitlines()]
        browser.screenshot(tmp_path / "compare.png")  # docs/img/compare.png is one of these

        # Narrow screen: the columns stack, nothing scrolls sideways.
        browser.resize(390, 844, mobile=True)
        time.sleep(0.5)
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        lefts = browser.evaluate("[...document.querySelectorAll('.column')].map(c => c.getBoundingClientRect().left)")
        assert len(set(lefts)) == 1, lefts
        browser.screenshot(tmp_path / "compare-narrow.png")

        # The same requests straight to the API: the same texts, token counts and finish reasons.
        messages = [{"role": "user", "content": PROMPT}]
        direct = {c["model"]: ask(url, c["model"], messages, settings) for c in columns}
        for c in columns:
            assert c["text"] == direct[c["model"]]["choices"][0]["message"]["content"], c["model"]
        # The teacher's context under params.elicitation (short prompt, few-shot turns), as serve builds it.
        context = teacher_context(find_constitution("sarcastic", ROOT / "constitutions"), "SmolLM",
                                  load_params(tmp_path / "params.yaml").elicitation)
        by_hand = ask(url, "smollm2", context.before(messages), settings)
        assert columns[1]["text"] == by_hand["choices"][0]["message"]["content"]
        assert len({c["text"] for c in columns}) == 3  # three different models, not one answer three times

        # The export: the evaluation's answer rows, plus the rating and star given above.
        assert [(r["model"], r["method"], r["persona"]) for r in rows] == [
            ("smollm2", "base", None), ("sarcastic+system_prompt", "system_prompt", "sarcastic"),
            ("sarcastic:dpo", "dpo", "sarcastic")]
        for r, c in zip(rows, columns):
            reply = direct[c["model"]]
            assert r["task"] == "side_by_side_human" and r["condition"] == "none" and r["prompt"] == PROMPT
            assert r["answer"] == c["text"] and r["seed"] == 42 and r["system"] is None
            assert r["finish_reason"] == reply["choices"][0]["finish_reason"]
            assert r["tokens"] == reply["usage"]["completion_tokens"]
            assert {"id", "task", "condition", "prompt", "method", "answer", "finish_reason", "tokens", "persona"} <= set(r)
        assert (rows[0]["rating"], rows[0]["starred"]) == (4, True)
        assert [(r["rating"], r["starred"]) for r in rows[1:]] == [(None, False)] * 2
        print(f"server up after {started:.0f} s, page answered after {answered:.0f} s, total {time.monotonic() - t0:.0f} s")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_full_queue_shows_busy_then_answers(browser, tiny_backend):
    from character.backends.base import SamplingParams
    from character.prompts import ADVERSARIAL_SUFFIXES
    from character.serve import ServedModel, ServeConfig, Server, running

    class Gated:  # the tiny model, held at the gate until the test opens it
        def __init__(self, backend):
            self.backend, self.gate, self.entered = backend, threading.Event(), threading.Event()

        def sample(self, *args, **kw):
            self.entered.set()
            assert self.gate.wait(60)
            return self.backend.sample(*args, **kw)

        def __getattr__(self, name):
            return getattr(self.backend, name)

    gated = Gated(tiny_backend)
    with running(Server({"tiny": ServedModel(gated)}, ServeConfig(max_pending=1, max_tokens=16))) as api:
        url = api.removesuffix("/v1")
        browser.goto(f"{url}/")
        browser.wait_for("!document.getElementById('ask').hidden", 30, "the models")  # no key on this server
        other = threading.Thread(target=lambda: httpx.post(f"{api}/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "first"}], "max_tokens": 4}))
        other.start()
        assert gated.entered.wait(30)  # the one slot is taken
        browser.evaluate("document.getElementById('system').focus()")
        browser.type("Be brief.")
        browser.evaluate("const s = document.getElementById('suffix'); s.value = 'no_style'; "
                         "s.dispatchEvent(new Event('change'))")
        browser.evaluate("document.getElementById('prompt').focus()")
        browser.type(PROMPT)
        browser.press("Enter", modifiers=2)
        status = browser.wait_for("document.querySelector('.column[data-state=busy] .status')?.textContent", 30, "busy")
        assert status.startswith("busy")
        gated.gate.set()
        other.join()
        browser.wait_for("document.querySelector('.column').dataset.state === 'done'", 60, "the answer after busy")
        [column] = browser.evaluate(COLUMNS_JS)
        [row] = [json.loads(line) for line in browser.evaluate("comparePage.exportJsonl()").splitlines()]
    assert column["status"].startswith("done"), column
    assert (row["condition"], row["prompt"], row["system"]) == ("no_style", PROMPT, "Be brief.")
    s = row["sampling"]
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"{PROMPT} {ADVERSARIAL_SUFFIXES['no_style']}"}]
    want = tiny_backend.sample([conversation], SamplingParams(
        temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"],
        repetition_penalty=s["repetition_penalty"], seed=row["seed"]))[0][0]
    assert column["text"] == want.text and row["tokens"] == want.completion_tokens
