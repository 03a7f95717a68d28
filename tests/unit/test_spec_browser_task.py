"""Issue 12's contracts: the browser, task, init and health settings (file keys, environment,
validation), the job spec's ``browser`` and ``task`` keys, and the task queue message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from shared import metrics
from shared.config import Settings, load_settings
from shared.errors import ConfigError
from shared.jobspec import SpecError, ruleset_of, status_view, validate_spec
from shared.messages import BadMessage, TaskMessage

TASKS = {"add": "tests.tasks_fixture:add", "page_title": "tests.tasks_fixture:page_title",
         "by-path": "/srv/tasks/my_tasks.py:run"}
SETTINGS = Settings(fetcher_kinds=("http", "browser"), tasks=TASKS)


def _load(tmp_path: Path, data: object, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return load_settings(path, env=env or {})


def test_defaults() -> None:
    s = Settings()
    assert s.browser_path == "/usr/bin/chromium"
    assert (s.browser_args, s.browser_timeout, s.browser_block) == ((), 30.0,
                                                                    ("image", "media", "font"))
    assert (s.browser_relaunch_on_timeout, s.browser_max_errors, s.browser_page_lease) == (
        True, 3, 120.0)
    assert (s.task_topic, s.tasks, s.task_concurrency, s.task_timeout, s.task_max_attempts) == (
        "task_queue", {}, 4, 300.0, 5)
    assert s.init == ()
    assert (s.worker_max_error_rate, s.worker_max_latency, s.worker_health_window) == (
        0.0, 0.0, 50)


def test_file_keys(tmp_path: Path) -> None:
    s = _load(tmp_path, {
        "browserPath": "/opt/chromium/chrome", "browserArgs": ["--disable-gpu"],
        "browserTimeout": "1m", "browserBlock": ["image", "stylesheet"],
        "browserRelaunchOnTimeout": False, "browserMaxErrors": 5, "browserPageLease": "500ms",
        "taskTopic": "jobs_tasks", "tasks": TASKS, "taskConcurrency": 8, "taskTimeout": "2m",
        "taskMaxAttempts": 2, "init": ["tests.init_fixture:record_init"],
        "workerMaxErrorRate": 0.5, "workerMaxLatency": "3s", "workerHealthWindow": 20,
        "fetcherKinds": ["http", "browser"]})
    assert (s.browser_path, s.browser_args, s.browser_timeout) == (
        "/opt/chromium/chrome", ("--disable-gpu",), 60.0)
    assert s.browser_block == ("image", "stylesheet")
    assert (s.browser_relaunch_on_timeout, s.browser_max_errors, s.browser_page_lease) == (
        False, 5, 0.5)
    assert (s.task_topic, s.tasks, s.task_concurrency, s.task_timeout, s.task_max_attempts) == (
        "jobs_tasks", TASKS, 8, 120.0, 2)
    assert s.init == ("tests.init_fixture:record_init",)
    assert (s.worker_max_error_rate, s.worker_max_latency, s.worker_health_window) == (
        0.5, 3.0, 20)


def test_environment() -> None:
    s = load_settings(None, env={"HARVESTER_FETCHER_KINDS": "http, browser,,",
                                 "HARVESTER_BROWSER_PATH": "/usr/lib/chromium/chromium",
                                 "HARVESTER_TASK_TOPIC": "tq"})
    assert s.fetcher_kinds == ("http", "browser")
    assert (s.browser_path, s.task_topic) == ("/usr/lib/chromium/chromium", "tq")
    with pytest.raises(ConfigError, match="invalid fetcher kind 'Browser'"):
        load_settings(None, env={"HARVESTER_FETCHER_KINDS": "http,Browser"})


def test_environment_kinds_override_the_file(tmp_path: Path) -> None:
    s = _load(tmp_path, {"fetcherKinds": ["http"]},
              env={"HARVESTER_FETCHER_KINDS": "http,browser"})
    assert s.fetcher_kinds == ("http", "browser")


@pytest.mark.parametrize("target", [
    "tests.tasks_fixture:add", "mod:fn", "_a.b_2:_f", "/srv/tasks/my_tasks.py:run",
    "relative/dir/t.py:fn", "t.py:fn"])
def test_valid_targets(target: str) -> None:
    assert Settings(tasks={"t": target}, init=(target,)).tasks == {"t": target}


@pytest.mark.parametrize("target", [
    "mod", "mod:", ":fn", "mod:fn:x", "mod.:fn", "1mod:fn", "mod:fn()", "mod fn:f",
    "/srv/tasks/:fn", "mod:a.b", "", "/x/f.py:"])
def test_invalid_targets(tmp_path: Path, target: str) -> None:
    with pytest.raises(ConfigError, match=r"^.*tasks: invalid target"):
        _load(tmp_path, {"tasks": {"t": target}})
    with pytest.raises(ConfigError, match=r"^.*init: invalid target"):
        _load(tmp_path, {"init": [target]})


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a/b", "x" * 65, "é"])
def test_invalid_task_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid task name"):
        _load(tmp_path, {"tasks": {name: "m:f"}})


def test_task_names() -> None:
    names = {"_x": "m:f", "search.v2": "m:f", "page-title": "m:f", "a" * 64: "m:f"}
    assert Settings(tasks=names).tasks == names


def test_browser_block(tmp_path: Path) -> None:
    assert Settings(browser_block=()).browser_block == ()
    assert Settings(browser_block=("font", "font", "xhr")).browser_block == ("font", "xhr")
    with pytest.raises(ConfigError, match="'document' cannot be blocked"):
        _load(tmp_path, {"browserBlock": ["document"]})
    with pytest.raises(ConfigError, match="unknown resource type 'images'"):
        _load(tmp_path, {"browserBlock": ["images"]})


@pytest.mark.parametrize(("key", "value"), [
    ("browserMaxErrors", 0), ("taskConcurrency", 0), ("taskMaxAttempts", 0),
    ("workerMaxErrorRate", 1.5), ("workerMaxErrorRate", -0.1), ("workerHealthWindow", 0),
    ("browserTimeout", "0s"), ("browserPageLease", 0), ("taskTimeout", "-1s")])
def test_out_of_range(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigError):
        _load(tmp_path, {key: value})


# -- the job spec --------------------------------------------------------------------------


def _spec(**data: object) -> dict[str, object]:
    return {"urls": ["http://a.example/"], **data}


def _validate(data: dict[str, object], settings: Settings = SETTINGS):  # type: ignore[no-untyped-def]
    return validate_spec(json.dumps(data), settings)


def test_browser_options() -> None:
    spec = _validate(_spec(fetcher="browser", browser={
        "wait": "networkidle", "selector": "a.next", "waitMs": 250, "timeout": 2,
        "block": [], "stealth": True}))
    assert spec.browser is not None
    assert (spec.browser.wait, spec.browser.selector, spec.browser.wait_ms) == (
        "networkidle", "a.next", 250)
    assert (spec.browser.timeout, spec.browser.block, spec.browser.stealth) == (2.0, (), True)
    stored = spec.stored()
    assert stored["browser"] == {"wait": "networkidle", "selector": "a.next", "waitMs": 250,
                                 "timeout": 2.0, "block": [], "stealth": True}
    again = _validate({**status_view(stored, ["http://a.example/"])})
    assert again == spec
    defaults = _validate(_spec(fetcher="browser", browser={})).browser
    assert defaults is not None
    assert (defaults.wait, defaults.selector, defaults.wait_ms, defaults.timeout,
            defaults.block, defaults.stealth) == ("load", None, 0, None, None, False)


def test_browser_only_with_the_browser_fetcher() -> None:
    with pytest.raises(SpecError, match=r'^Invalid browser: only with "fetcher": "browser" '
                                        r"\(fetcher is http\)"):
        _validate(_spec(browser={"wait": "load"}))
    with pytest.raises(SpecError, match="^Invalid fetcher: unknown fetcher kind: browser"):
        _validate(_spec(fetcher="browser", browser={}), Settings())


@pytest.mark.parametrize(("browser", "field"), [
    ({"wait": "idle"}, "browser.wait"), ({"waitMs": 30_001}, "browser.waitMs"),
    ({"waitMs": -1}, "browser.waitMs"), ({"timeout": 0}, "browser.timeout"),
    ({"timeout": 121}, "browser.timeout"), ({"selector": ""}, "browser.selector"),
    ({"selector": "a" * 1001}, "browser.selector"), ({"selector": "a\0"}, "browser.selector"),
    ({"selector": "a[["}, "browser.selector"), ({"selector": "nope=foo"}, "browser.selector"),
    ({"block": ["document"]}, "browser.block"), ({"block": ["pics"]}, "browser.block"),
    ({"stealth": "yes"}, "browser.stealth"), ({"wait_ms": 5}, "browser.wait_ms"),
    ("load", "browser")])
def test_browser_errors_name_their_field(browser: object, field: str) -> None:
    with pytest.raises(SpecError, match="^Invalid " + re.escape(field) + ": "):
        _validate(_spec(fetcher="browser", browser=browser))


def test_browser_is_not_in_the_rule_set() -> None:
    plain = _validate(_spec(fetcher="browser"))
    rendered = _validate(_spec(fetcher="browser", browser={"wait": "networkidle"}))
    assert plain.ruleset() == rendered.ruleset() == 0
    assert "browser" not in plain.stored() and "task" not in plain.stored()


def test_task_changes_the_rule_set() -> None:
    a = _validate(_spec(task={"name": "page_title"}))
    b = _validate(_spec(task={"name": "page_title", "args": {"n": 1}}))
    c = _validate(_spec(task="page_title"))  # a bare name
    assert a.task is not None and c.task is not None
    assert (a.task.name, a.task.args) == ("page_title", {})
    assert a.stored()["task"] == c.stored()["task"] == {"name": "page_title", "args": {}}
    assert len({0, a.ruleset(), b.ruleset()}) == 3
    assert a.ruleset() == c.ruleset() == ruleset_of({"task": {"name": "page_title",
                                                               "args": {}}})
    again = _validate(status_view(b.stored(), ["http://a.example/"]))
    assert again == b


def test_task_names_are_allow_listed() -> None:
    with pytest.raises(SpecError, match=r"^Invalid task\.name: unknown task 'nope' "
                                        r"\(allowed: add, page_title, by-path\)$"):
        _validate(_spec(task={"name": "nope"}))
    with pytest.raises(SpecError, match=r"^Invalid task\.name: unknown task 'add' "
                                        r"\(allowed: none\)$"):
        _validate(_spec(task="add"), Settings())


@pytest.mark.parametrize(("task", "field"), [
    ({"name": "add", "args": {"a": "x\0"}}, "task.args"),
    ({"name": "add", "args": {"x\0": 1}}, "task.args"),
    ({"name": "add", "args": [1]}, "task.args"), ({"args": {}}, "task.name"),
    ({"name": "add", "kind": "http"}, "task.kind"), (7, "task")])
def test_task_errors_name_their_field(task: object, field: str) -> None:
    with pytest.raises(SpecError, match="^Invalid " + re.escape(field)):
        _validate(_spec(task=task))


# -- the task message and metrics ----------------------------------------------------------


def test_task_message_round_trip() -> None:
    m = TaskMessage(task=12345678901)
    assert m.encode() == b'{"v":1,"task":12345678901}'
    assert TaskMessage.decode(m.encode()) == m
    assert TaskMessage.decode(b'{"v":1,"task":3,"later":"field"}').task == 3
    for bad in (b"", b"{", b'{"v":2,"task":1}', b'{"v":1}', b'{"v":1,"task":"1"}', b"[]"):
        with pytest.raises(BadMessage, match="undecodable task message"):
            TaskMessage.decode(bad)


def test_metrics_declared() -> None:
    metrics.BROWSER_RELAUNCHES.labels(reason="timeout").inc(0)
    metrics.BROWSER_PAGES_RECLAIMED.inc(0)
    metrics.TASKS_FINISHED.labels(kind="browser", state="succeeded").inc(0)
    text = generate_latest().decode()
    # The values are whatever earlier tests in this process counted: the series must exist.
    for series in ('harvester_browser_relaunches_total{reason="timeout"} ',
                   "harvester_browser_pages_reclaimed_total ",
                   'harvester_tasks_finished_total{kind="browser",state="succeeded"} '):
        assert any(line.startswith(series) for line in text.splitlines()), series
