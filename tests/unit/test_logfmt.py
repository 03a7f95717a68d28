"""JSON logs: one object per line with ts, level, logger, msg; job and url when the record has
them; the traceback in exc. And the -log-format / -metrics-addr flags."""

from __future__ import annotations

import json
import logging

from shared.logfmt import JsonFormatter
from shared.service import parse_flags, settings_from_flags


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    r = logging.LogRecord("worker.pipeline", logging.INFO, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_one_object_per_line_with_job_and_url() -> None:
    line = JsonFormatter().format(record("visit job=%d url=%s", 7, "http://a/\nb", job=7,
                                         url="http://a/\nb"))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "worker.pipeline"
    assert obj["msg"] == "visit job=7 url=http://a/\nb"
    assert obj["job"] == 7 and obj["url"] == "http://a/\nb"
    assert obj["ts"].endswith("Z") and "T" in obj["ts"]
    assert "exc" not in obj


def test_no_job_no_url_keys_and_exception_in_exc() -> None:
    obj = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "job" not in obj and "url" not in obj
    assert "ValueError: boom" in obj["exc"] and "Traceback" in obj["exc"]


def test_flags_pass_log_format_and_metrics_addr() -> None:
    args = parse_flags("worker", ["-log-format", "json", "-metrics-addr", "127.0.0.1:9102"])
    s = settings_from_flags(args, env={})
    assert s.log_format == "json" and s.metrics_addr == "127.0.0.1:9102"
    s = settings_from_flags(parse_flags("worker", []), env={})
    assert s.log_format == "text" and s.metrics_addr == ""
