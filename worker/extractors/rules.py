"""The built-in rule extractors: ``follow`` (the job spec's ``follow`` and ``ids``: the links
and ids to follow, as ``link`` and ``id`` yields) and ``items`` (an ``extract`` entry of kind
``items``: named fields by CSS, XPath or regex). Both run in the worker's parser processes
(``worker.extractors.rules_core`` there), within the parse deadline: a page they cannot read in
time (a regex that backtracks for ever) fails this job's visit only, ``extract[<i>] <name>:
parsing took longer than <n>s``. They read every body the fetcher kept (``reads_any_body``:
ids and items in XML, JSON or text too)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import ConfigError
from shared.model import Extraction, FetchedPage, Yield
from worker.extractors import EXTRACTORS

if TYPE_CHECKING:  # this package is imported by the parser processes: nothing heavy
    from pydantic import BaseModel

    from shared.config import Settings
    from worker.extractors.lanes import Parser


class RulesRefused(ConfigError, ValueError):
    """Rules the job spec's model refuses: a hand-made spec, or one stored before its patterns
    ran on RE2 (``shared.patterns``). The worker's plan refuses the job once, ``not served by
    this worker: <where>: <problem>``, rather than fail its every page."""


M = TypeVar("M", bound="BaseModel")


def _validated(model: type[M], where: str, options: Any) -> M:
    """``options`` as ``model``; :class:`RulesRefused` (its first error) when it refuses them."""
    from pydantic import ValidationError
    try:
        return model.model_validate_json(json.dumps(options))
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(part) for part in (where, *first["loc"]) if part != "")
        raise RulesRefused(loc, first["msg"]) from None


@EXTRACTORS.register("follow")
class Follow:
    """Options: ``follow`` and ``ids``, as stored in the job spec (either may be None)."""
    name = "follow"

    def __init__(self, settings: Settings | None, options: Mapping[str, Any],
                 lanes: Parser) -> None:
        from shared.jobspec import FollowSpec, IdSpec  # validated again: a hand-made spec
        follow, ids = options.get("follow"), options.get("ids")
        rules: dict[str, Any] = {}
        if follow:
            f = _validated(FollowSpec, "follow", follow)
            rules.update(linkRegex=f.link_regex, css=list(f.css), attr=f.attr)
        if ids:
            i = _validated(IdSpec, "ids", ids)
            rules.update(idRegex=i.regex, urlFormat=i.url_format)
        self.rules = json.dumps(rules, sort_keys=True)
        self.lanes = lanes

    def accepts(self, page: FetchedPage) -> bool:
        return page.body is not None

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        assert page.body is not None
        found = await self.lanes.run("follow", page.body, base_url, page.charset, self.rules)
        return Extraction(yields=tuple(Yield(kind, value) for kind, value in found))


@EXTRACTORS.register("items")
class Items:
    """Options: those of ``shared.jobspec.ItemsSpec`` (``name``, ``each``, ``fields``)."""
    name = "items"

    def __init__(self, settings: Settings | None, options: Mapping[str, Any],
                 lanes: Parser) -> None:
        from shared.jobspec import ItemsSpec
        spec = _validated(ItemsSpec, "items", dict(options))
        self.rules = spec.model_dump_json(by_alias=True)
        self.lanes = lanes

    def accepts(self, page: FetchedPage) -> bool:
        return page.body is not None

    async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
        assert page.body is not None
        found = await self.lanes.run("items", page.body, base_url, page.charset, self.rules)
        return Extraction(yields=tuple(Yield("item", value) for value in found))
