"""Follow rules, ids and items on one page: pure functions, run in the worker's parser processes
(``worker.extractors.lanes``, ``LANE_FUNCTIONS`` "follow" and "items"), so that a huge
document is stopped by the parse deadline, never the event loop. Regexes run on RE2
(``shared.patterns``): linear time, none backtracks.

Each takes the body, the page's URL (links resolve against it), its encoding and the rules as
JSON (the extractor's options, ``worker.extractors.rules``); the compiled rules are cached by
that JSON.

- ``follow``: ``linkRegex`` matches in the decoded body (its one group when it has one; ``&amp;``
  read as ``&``) and the ``attr`` of the elements ``css`` selects, resolved against the page,
  canonical, http(s) only: ``("link", {"url"})``; ``idRegex`` matches that are usable ids
  (``shared.ids.check_id``), each as ``("id", {"id", "url": id_url(urlFormat, id)})``. Each
  URL and id once per page, in the order first found (regex matches, then each selector's).
- ``items``: one item per page, or one per match of ``each`` (CSS), ``_type`` = ``name`` when
  given; each field by ``css`` (selectolax: the element's text, or its ``attr``), ``xpath``
  (lxml: an element's text or ``attr``, or the string or number the expression gives) or
  ``regex`` (over the source text: the page's, or the ``each`` match's HTML; its group if any);
  ``take`` ``first`` (nothing found: ``default``) or ``all`` (a list); ``type`` coerces
  (``int``/``float`` ignore ``,`` and surrounding blanks, finite floats only; ``bool``:
  true/false, yes/no, on/off, 1/0), a value that does not coerce becomes ``default``. Within
  ``each``, an XPath runs over the match's HTML as a document (use ``//``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selectolax.lexbor import LexborHTMLParser as _Parser

from shared import patterns
from shared.ids import check_id, id_url
from shared.patterns import Regex
from shared.urls import Resolver
from worker.extractors.links_html import decode_body

Found = list[tuple[str, dict[str, Any]]]
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})


@dataclass(frozen=True, slots=True)
class _Follow:
    link_regex: Regex | None
    css: tuple[str, ...]
    attr: str
    id_regex: Regex | None
    url_format: str | None


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    css: str | None
    xpath: Any  # lxml.etree.XPath
    regex: Regex | None
    attr: str | None
    all: bool
    coerce: Callable[[Any], Any]
    default: Any


@dataclass(frozen=True, slots=True)
class _Items:
    name: str | None
    each: str | None
    fields: tuple[_Field, ...]


@functools.lru_cache(maxsize=64)
def compiled(kind: str, rules: str) -> _Follow | _Items:
    """The rules of an extractor (``kind`` "follow" or "items", ``rules`` its JSON) compiled;
    their regexes were checked by its factory (``worker.extractors.rules``), which refuses the
    job's plan for one RE2 refuses."""
    r = json.loads(rules)
    if kind == "follow":
        link, ids = r.get("linkRegex"), r.get("idRegex")
        return _Follow(patterns.compile(link) if link else None,
                       tuple(r.get("css") or ()), r.get("attr") or "href",
                       patterns.compile(ids) if ids else None, r.get("urlFormat"))
    fields = []
    for name, f in r["fields"].items():
        xpath = None
        if f.get("xpath"):
            from lxml import etree
            xpath = etree.XPath(f["xpath"])
        regex = patterns.compile(f["regex"]) if f.get("regex") else None
        fields.append(_Field(name, f.get("css"), xpath, regex, f.get("attr"),
                             f.get("take") == "all", _COERCE[f.get("type") or "str"],
                             f.get("default")))
    return _Items(r.get("name"), r.get("each"), tuple(fields))


def follow(body: bytes, base_url: str, encoding: str | None, rules: str) -> Found:
    """The links and ids the rules find on the page (see the module's docstring)."""
    c = compiled("follow", rules)
    assert isinstance(c, _Follow)
    text = decode_body(body, encoding)
    found: Found = []
    resolve = Resolver(base_url)
    seen: set[str] = set()

    def link(href: str) -> None:
        url = resolve(href.replace("&amp;", "&") if "&" in href else href)
        if url is not None and url not in seen:
            seen.add(url)
            found.append(("link", {"url": url}))

    if c.link_regex is not None:
        for m in c.link_regex.findall(text):
            link(m)
    if c.css:
        tree = _Parser(text)
        for selector in c.css:
            for node in tree.css(selector):
                value = node.attributes.get(c.attr)
                if value:
                    link(value)
    if c.id_regex is not None and c.url_format is not None:
        ids: set[str] = set()
        for ident in c.id_regex.findall(text):
            if ident in ids or check_id(ident) is not None:
                continue
            ids.add(ident)
            try:
                found.append(("id", {"id": ident, "url": id_url(c.url_format, ident)}))
            except ValueError:  # no URL can be made of it
                continue
    return found


def items(body: bytes, base_url: str, encoding: str | None, rules: str) -> list[dict[str, Any]]:
    """The items the rules find on the page (see the module's docstring)."""
    c = compiled("items", rules)
    assert isinstance(c, _Items)
    text = decode_body(body, encoding)
    if c.each is None:
        scopes: list[_Scope] = [_Scope(text, None)]
    else:
        scopes = [_Scope(node.html or "", node) for node in _Parser(text).css(c.each)]
    out = []
    for scope in scopes:
        item: dict[str, Any] = {} if c.name is None else {"_type": c.name}
        for f in c.fields:
            values = scope.values(f)
            if f.all:
                item[f.name] = [_coerced(f, v) for v in values]
            else:
                item[f.name] = _coerced(f, values[0]) if values else f.default
        out.append(item)
    return out


class _Scope:
    """Where an item's fields are looked for: the page, or one match of ``each``."""

    __slots__ = ("_doc", "node", "text")

    def __init__(self, text: str, node: Any) -> None:
        self.text, self.node = text, node  # node: the parsed page (at the first CSS), a match
        self._doc: Any = False  # the lxml document, parsed at the first XPath

    def values(self, f: _Field) -> list[Any]:
        if f.css is not None:
            if self.node is None:
                self.node = _Parser(self.text)
            nodes = self.node.css(f.css)
            if f.attr is not None:
                return [v for n in nodes if (v := n.attributes.get(f.attr)) is not None]
            return [n.text(strip=True) for n in nodes]
        if f.regex is not None:
            return list(f.regex.findall(self.text))
        doc = self.document()
        if doc is None:
            return []
        got = f.xpath(doc)
        if not isinstance(got, list):  # a number, a string or a boolean
            return [got]
        values = []
        for v in got:
            if isinstance(v, str):  # an attribute's or a text node's value
                values.append(str(v))
            elif hasattr(v, "text_content"):
                values.append(v.get(f.attr) if f.attr is not None else v.text_content().strip())
        return [v for v in values if v is not None]

    def document(self) -> Any:
        if self._doc is False:
            import lxml.etree
            import lxml.html
            try:
                self._doc = lxml.html.document_fromstring(
                    self.text.encode(),
                    parser=lxml.html.HTMLParser(encoding="utf-8"))
            except (lxml.etree.ParserError, ValueError):  # an empty document
                self._doc = None
        return self._doc


def _coerced(f: _Field, value: Any) -> Any:
    try:
        return f.coerce(value)
    except (ValueError, TypeError, OverflowError):
        return f.default


def _str(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text.replace("\0", "\ufffd") if "\0" in text else text


def _number(value: Any) -> str:
    return value.strip().replace(",", "") if isinstance(value, str) else str(value)


def _int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(_number(value))


def _float(value: Any) -> float:
    number = float(_number(value))
    if not math.isfinite(number):  # JSON and jsonb have no NaN or infinity
        raise ValueError(value)
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = _number(value).lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(value)


_COERCE: dict[str, Callable[[Any], Any]] = {"str": _str, "int": _int, "float": _float,
                                            "bool": _bool}
