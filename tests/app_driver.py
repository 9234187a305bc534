"""Drive the Streamlit chat app in-process (streamlit.testing AppTest); shared by tests/ui/.
Importable under `--import-mode=importlib` through `pythonpath = ["tests"]` in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
TIMEOUT = 180  # seconds per script run: the first question loads the models


def open_app(monkeypatch, profile: Path) -> AppTest:
    """The app on `profile` (RAGFT_CONFIG), run once; fails the test on any exception in the page."""
    monkeypatch.setenv("RAGFT_CONFIG", str(profile))
    monkeypatch.delenv("RAGFT_SET", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def ask(at: AppTest, question: str, system: str) -> AppTest:
    """Pick `system` and type `question` into the chat input, as a user would."""
    at.selectbox(key="system").set_value(system)
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, at.exception
    return at
