"""The shared CLI error convention: user-facing errors exit 2 with their message, bugs keep a traceback."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.data import DataError
from pipeline.errors import UserFacingError, run_cli
from pipeline.models import ModelNotFoundError


@pytest.mark.parametrize("error", [ConfigError("retrieve.top_k must be > 0; got -1"), DataError("f.jsonl:3: bad JSON"), ModelNotFoundError("model 'x' not found")])
def test_user_facing_errors_print_their_message_and_exit_2(error, capsys):
    def body():
        raise error

    assert isinstance(error, UserFacingError)
    assert run_cli(body) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_success_and_own_exit_codes():
    assert run_cli(lambda: None) == 0
    assert run_cli(lambda: 3) == 3


def test_a_bug_keeps_its_traceback():
    def body():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_cli(body)
