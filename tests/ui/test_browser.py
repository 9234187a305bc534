"""The chat app in a real browser: `streamlit run` on a free loopback port, driven by Debian's
headless Chromium through Playwright's Python package (the system browser; `playwright install`
is never needed).

    apt-get install -y chromium && .venv/bin/pip install playwright
    .venv/bin/python -m pytest tests/ui/test_browser.py -m slow -s      # -s shows the figures
    RAGFT_UI_SCREENSHOT=/tmp/ui-screenshot.png .venv/bin/python -m pytest tests/ui/test_browser.py -m slow -s

It uploads (through the page, XSRF-protected) a markdown document holding
`<script>alert(1)</script>`, asks the default system a question, then asks nn_answer about the
document, opens the sources and checks that the script is shown as literal text and never ran
(no dialog, no injected script element, no handler fired). Screenshots go to the test's tmp
folder (and to $RAGFT_UI_SCREENSHOT, plus a -full-system copy beside it, when set). Skipped, with the reason, when Chromium or the
playwright package is missing; marked slow (about a minute) so the default suite stays fast.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RAGFT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PAYLOAD = "<script>alert(1)</script>"
DOC = f"""# Zorblax flux capacitor

The zorblax flux capacitor stores quantum tachyons inside a frozen lattice of mirrors.
Markup in a passage is data: {PAYLOAD} <img src="x" onerror="window.__pwned = 1">
""".encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def playwright_api():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's headless browser with `apt-get install -y chromium` (or set RAGFT_CHROMIUM)")
    module = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed: `.venv/bin/pip install playwright` (no `playwright install` needed)")
    return module


@pytest.fixture
def server(ui_system, tmp_path):
    """`streamlit run ui/app.py` from the repository root (so .streamlit/config.toml applies)."""
    profile, config = ui_system
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "streamlit.log", "w")
    command = [sys.executable, "-m", "streamlit", "run", "ui/app.py", "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true", "--", "--config", str(profile)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.3)
        print(f"\n[browser] server up on {url} in {time.perf_counter() - started:.1f} s")
        yield url, config
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def last_answer(page):
    return page.get_by_test_id("stChatMessage").last


def ask(page, question: str, expected_messages: int, timeout_ms: int = 180_000) -> float:
    started = time.perf_counter()
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")
    page.get_by_test_id("stChatMessage").nth(expected_messages - 1).wait_for(timeout=timeout_ms)
    # the feedback widget is written after the answer, its sources and trace: the turn is complete
    last_answer(page).get_by_test_id("stFeedback").wait_for(timeout=timeout_ms)
    return time.perf_counter() - started


def test_chat_in_chromium_shows_answer_sources_and_script_as_text(server, playwright_api, tmp_path):
    url, config = server
    expect = playwright_api.expect
    dialogs: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        started = time.perf_counter()
        page.goto(url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=120_000)
        print(f"[browser] page ready in {time.perf_counter() - started:.1f} s")

        # upload the document through the page (multipart POST with the XSRF token)
        started = time.perf_counter()
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files({"name": "zorblax.md", "mimeType": "text/markdown", "buffer": DOC})
        added = page.get_by_test_id("stAlertContentSuccess").filter(has_text="added zorblax.md")
        added.wait_for(timeout=180_000)
        print(f"[browser] upload ingested in {time.perf_counter() - started:.1f} s: {added.inner_text().splitlines()[-1]}")

        seconds = ask(page, "What is a B-tree?", 2)
        reply = last_answer(page)
        print(f"[browser] system full answered in {seconds:.1f} s (first question: loads the models)")
        reply.get_by_text("Sources (").wait_for()
        caption = reply.get_by_test_id("stCaptionContainer").filter(has_text="system full").inner_text()
        print(f"[browser] {caption}")
        for stage in ("rewrite", "retrieve", "rerank", "generate", "total"):
            assert f"{stage} " in caption
        reply.get_by_text("Trace: rewrite, rounds, timings").click()
        assert "Round 1 · rewrite " in reply.inner_text()
        reply.get_by_text("Sources (5)").click()
        reply.get_by_test_id("stText").first.wait_for()
        page.wait_for_timeout(800)  # let the expander finish opening: a click on a moving toggle gets lost
        reply.get_by_text("Show candidates before reranking").click()
        try:
            expect(reply.get_by_test_id("stDataFrame")).to_have_count(2, timeout=60_000)  # candidates + timings
        except AssertionError:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"[browser] failure screenshot {tmp_path / 'failure.png'}")
            raise
        # Streamlit scrolls inside its own container: a tall viewport shows the whole answer
        page.set_viewport_size({"width": 1280, "height": 4200})
        page.wait_for_timeout(800)
        shots = [tmp_path / "ui-full-system.png"]
        page.screenshot(path=str(shots[0]))
        page.set_viewport_size({"width": 1280, "height": 1600})

        page.get_by_test_id("stSelectbox").click()
        page.get_by_role("option", name="nn_answer", exact=True).click()
        seconds = ask(page, "What does the zorblax flux capacitor store?", 4)
        print(f"[browser] system nn_answer answered in {seconds:.1f} s")
        reply = last_answer(page)
        reply.get_by_text("Sources (1)").click()
        passage = reply.get_by_test_id("stText").first
        passage.wait_for()
        text = passage.inner_text()
        assert PAYLOAD in text and "quantum tachyons" in text, text
        assert "zorblax.md › Zorblax flux capacitor" in reply.inner_text()
        assert PAYLOAD in reply.get_by_test_id("stMarkdown").first.inner_text()  # the answer (the passage itself) too

        # nothing ran: no dialog, no script element carrying the payload, no handler fired
        page.wait_for_timeout(500)
        injected = page.evaluate("() => [...document.querySelectorAll('script')].filter(s => s.textContent.includes('alert(1)')).length")
        pwned = page.evaluate("() => window.__pwned === 1")
        print(f"[browser] dialogs: {len(dialogs)}, injected script elements: {injected}, onerror fired: {pwned}")
        assert dialogs == [] and injected == 0 and not pwned

        reply.scroll_into_view_if_needed()
        shots.append(tmp_path / "ui-chat.png")
        page.screenshot(path=str(shots[1]))
        for shot in shots:
            print(f"[browser] screenshot {shot} ({shot.stat().st_size} bytes)")
        if os.environ.get("RAGFT_UI_SCREENSHOT"):  # for people: the last page, and the full system's details beside it
            target = Path(os.environ["RAGFT_UI_SCREENSHOT"])
            shutil.copyfile(shots[1], target)
            shutil.copyfile(shots[0], target.with_name(target.stem + "-full-system" + target.suffix))
        browser.close()
