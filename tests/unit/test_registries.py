"""The plug-in registries (worker/registry.py): built-ins satisfy their protocols, an unknown
name is a ConfigError that names it and the known ones, a plug-in registers with a decorator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from worker.extractors import EXTRACTORS, Extractor
from worker.extractors.lanes import Parser
from worker.fetchers import FETCHERS, Fetcher
from worker.outputs import OUTPUTS, Output
from worker.registry import Registry
from worker.sources import SOURCES, Source
from worker.tasks import TASKS, Task

SETTINGS = Settings()
ROOT = Path(__file__).resolve().parents[2]


def test_builtins_satisfy_their_protocols() -> None:
    lanes = Parser(1.0)  # not entered: no process is started
    assert {"http"} <= set(FETCHERS.names()) and {"links"} <= set(EXTRACTORS.names())
    assert isinstance(FETCHERS.create("http", SETTINGS, concurrency=2), Fetcher)
    assert FETCHERS.create("http", SETTINGS, concurrency=2).kind == "http"
    assert isinstance(EXTRACTORS.create("links", SETTINGS, {}, lanes), Extractor)
    web = SOURCES.create("web", SETTINGS, lanes)
    assert isinstance(web, Source) and isinstance(web.link_extractor(), Extractor)
    assert web.fetcher == "http" and web.wants_body(200, "text/html")
    assert not web.wants_body(404, "text/html") and not web.wants_body(200, "image/png")


async def test_a_fetcher_is_made_for_its_kinds_concurrency() -> None:
    # worker.crawl.run passes each served kind's concurrency; http sizes its connections by it.
    async with FETCHERS.create("http", Settings(concurrency=50), concurrency=3) as http:
        assert http.session.connector is not None and http.session.connector.limit == 6


def test_an_unknown_name_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as e:
        FETCHERS.create("nope", SETTINGS)
    assert e.value.source == "fetcher"
    assert "'nope'" in e.value.problem and "browser, github, http" in e.value.problem  # and the known ones
    for registry in (EXTRACTORS, OUTPUTS, TASKS, SOURCES):
        with pytest.raises(ConfigError, match="unknown 'nope'"):
            registry.create("nope")


def test_a_plugin_registers_with_a_decorator() -> None:
    things: Registry[Task] = Registry("task")

    @things.register("shout")
    class Shout:
        name = "shout"

        def __init__(self, loud: bool) -> None:
            self.loud = loud

        async def __call__(self, ctx: object, page: object, ex: object) -> object:
            return ex

    made = things.create("shout", True)
    assert isinstance(made, Shout) and made.loud and isinstance(made, Task)
    assert things.names() == ("shout",) and "shout" in things
    with pytest.raises(ConfigError, match="registered already"):
        things.register("shout")(type("Other", (), {}))


def test_the_test_plugins_satisfy_their_protocols(tmp_path: Path) -> None:
    import tests.plugins  # noqa: F401 - registers them

    lanes = Parser(1.0)
    assert isinstance(FETCHERS.create("static", SETTINGS, concurrency=2), Fetcher)
    assert isinstance(EXTRACTORS.create("test-title", SETTINGS, {"tag": "h1"}, lanes), Extractor)
    assert isinstance(TASKS.create("test-record", SETTINGS, {}), Task)
    files = OUTPUTS.create("test-files", SETTINGS, {"dir": str(tmp_path)})
    assert isinstance(files, Output) and files.needs_raw


def test_the_parser_processes_start_light() -> None:
    # A parser process (python -m worker.extractors.lanes) imports the extractors package
    # first: it must not import the lanes module itself (runpy would warn, and run a second
    # copy), nor the worker's network and database clients.
    code = ("import sys, worker.extractors\n"
            "heavy = {'worker.extractors.lanes', 'aiohttp', 'asyncpg'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
