"""Client regular expressions (scope allow/deny, priorities, session blockPatterns, follow, ids
and field regexes) run on RE2 (``google-re2``): linear time in the text, whatever the pattern,
so a pattern such as ``(a+)+$`` cannot stall a tier on a long run of a's.

RE2's syntax is Python's without the constructs that need backtracking: backreferences
(``\\1``, ``(?P=name)``), lookaround (``(?=`` ``(?!`` ``(?<=`` ``(?<!``), atomic groups
``(?>``, possessive repeats (``*+`` ``++`` ``?+``), conditionals ``(?(``, ``\\Z`` (use ``\\z``
or ``$``) and repeats over 1000. ``\\d \\w \\s \\b`` are ASCII (``\\pL``, ``\\pN`` for letters
and digits of any script); ``$`` without ``(?m)`` is the end of the text only.

:func:`problem` says what is wrong with a pattern (None: usable); :func:`compile` compiles one
(cached). A job stored before the engine changed may hold a pattern RE2 refuses. Its scope,
priorities and session blockPatterns use :func:`stored`, which logs it once and gives None (an
allow pattern then matches nothing, a deny pattern everything) rather than raise on the commit
path. Its follow, ids and field regexes are checked again when a worker plans the job
(``worker.extractors.rules``): the plan is refused once, "not served by this worker:
follow.linkRegex: <problem>", and no page is read with them.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from typing import Any, Protocol, cast

import re2

log = logging.getLogger(__name__)

MAX_PATTERN_CHARS = 1000
MAX_MEMORY = 8 << 20  # RE2's budget for one compiled pattern
LINEAR = "is not supported: patterns run on a linear-time engine"

# The constructs RE2 refuses, as (what, how it is spotted in the pattern), first match named.
_CONSTRUCTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (what, re.compile(rx)) for what, rx in (
        ("a lookbehind", r"(?<!\\)(?:\\\\)*\(\?<[=!]"),
        ("a lookahead", r"(?<!\\)(?:\\\\)*\(\?[=!]"),
        ("an atomic group", r"(?<!\\)(?:\\\\)*\(\?>"),
        ("a conditional", r"(?<!\\)(?:\\\\)*\(\?\("),
        ("a backreference", r"(?<!\\)(?:\\\\)*\\(?:[1-9]|g<)|\(\?P="),
        ("\\Z (use \\z or $)", r"(?<!\\)(?:\\\\)*\\Z"),
        ("a possessive repeat", r"(?:[*+?}])\+"),
        ("a repeat over 1000", r"\{\s*(?:\d{4,}|\d*\s*,\s*\d{4,})\s*\}"),
    ))


class Match(Protocol):
    def group(self, *groups: int | str) -> Any: ...


class Regex(Protocol):
    """What callers use of a compiled pattern (``re2._Regexp``; ``re.Pattern`` has it too)."""

    @property
    def pattern(self) -> Any: ...
    @property
    def groups(self) -> int: ...
    def search(self, text: str) -> Match | None: ...
    def findall(self, text: str) -> list[Any]: ...


class PatternError(ValueError):
    """A pattern :func:`problem` refuses; the message is the problem."""


def _options() -> Any:
    opts = re2.Options()
    opts.log_errors = False  # else RE2 writes each refusal to stderr
    opts.max_mem = MAX_MEMORY
    return opts


_OPTIONS = _options()


def problem(pattern: str) -> str | None:
    """What is wrong with a client's pattern, or None. A NUL or another control character is
    refused (PostgreSQL stores no NUL in text or jsonb, the others only serve to break logs);
    a Python syntax error keeps Python's message; a construct RE2 has not is named."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in pattern):
        return "control characters are not allowed"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"longer than {MAX_PATTERN_CHARS} characters"
    try:
        re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        refused = e
    else:
        return None
    for what, spot in _CONSTRUCTS:
        if spot.search(pattern):
            return f"{what} {LINEAR}"
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: not ours to say
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except re.error as e:
        return str(e)
    except (RecursionError, OverflowError, MemoryError):
        return "too complex"
    detail = refused.args[0] if refused.args else ""
    text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return f"{text or 'this construct'} {LINEAR}"


@functools.lru_cache(maxsize=1024)
def compile(pattern: str) -> Regex:
    """``pattern`` compiled by RE2 (``search``, ``findall``, ``groups`` as ``re``'s); raises
    :class:`PatternError` when :func:`problem` refuses it."""
    if (why := problem(pattern)) is not None:
        raise PatternError(why)
    return cast(Regex, re2.compile(pattern, _OPTIONS))


@functools.lru_cache(maxsize=1024)
def stored(pattern: str) -> Regex | None:
    """A pattern read back from a stored job, compiled; None (logged once per pattern) when
    :func:`problem` refuses it: a job made before patterns ran on RE2."""
    try:
        return compile(pattern)
    except PatternError as e:
        log.warning("a stored job's pattern %r is refused (%s): an allow pattern matches "
                    "nothing, a deny pattern everything", pattern, e)
        return None
