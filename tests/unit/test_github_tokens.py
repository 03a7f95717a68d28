"""worker/github_tokens.py: tokens from the environment and files, their ids (a hash, never the
token), and ``Redact``, which blanks every token out of log records (message, arguments,
traceback) on the root handlers."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from worker.github_tokens import Redact, load_tokens, token_id

A, B, C = "ghp_fakeTokenA000001", "ghp_fakeTokenB000002", "github_pat_fakeC_000003"


def test_token_id_is_a_short_hash() -> None:
    assert token_id(A) == "t-" + hashlib.sha256(A.encode()).hexdigest()[:12]
    assert token_id(A) != token_id(B) and A not in token_id(A)


def test_tokens_from_the_environment_then_files(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# the team's\n{B}\n\n  {C}  # bot\n{A}\n")
    s = Settings(github_tokens=(A,), github_token_files=(f,))
    assert load_tokens(s) == (A, B, C)
    assert load_tokens(Settings()) == ()


def test_a_malformed_file_line_is_named_never_shown(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{A}\nsecret value with spaces\n")
    with pytest.raises(ConfigError) as e:
        load_tokens(Settings(github_token_files=(f,)))
    assert "line 2 is malformed" in str(e.value) and "secret" not in str(e.value)


def test_a_file_line_follows_the_environments_rule(tmp_path: Path) -> None:
    # One token pattern (shared.config.GITHUB_TOKEN, ASCII only) for githubTokens and files.
    f = tmp_path / "tokens"
    f.write_text("ghp_t\u00f6ken_abcdef\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_tokens(Settings(github_token_files=(f,)))
    assert "line 1 is malformed" in str(e.value)
    with pytest.raises(ValueError):
        Settings(github_tokens=("ghp_t\u00f6ken_abcdef",))
    with pytest.raises(ConfigError, match="githubTokenFiles"):
        load_tokens(Settings(github_token_files=(tmp_path / "missing",)))


def test_redact_blanks_tokens_in_messages_args_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    redact = Redact([A, B])
    redact.install()
    log = logging.getLogger("test.github.tokens")
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        log.warning("sent Bearer %s", A)
        log.warning(f"header {B} inline")
        log.info("dict %r", {"Authorization": f"Bearer {A}"})
        try:
            raise ValueError(f"bad token {B}")
        except ValueError:
            log.exception("failed with %s", A)
        redact.uninstall()
        log.warning("after: %s", "nothing to hide")
    finally:
        root.removeHandler(handler)
        log.setLevel(old)
    text = out.getvalue()
    assert A not in text and B not in text
    assert text.count("***") == 5 and "after: nothing to hide" in text
    assert "ValueError: bad token ***" in text  # the traceback kept, scrubbed
    assert redact not in handler.filters and redact not in root.filters


def test_redact_without_tokens_changes_nothing() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "a %s", ("b",), None)
    assert Redact([]).filter(record) and record.args == ("b",)
