"""Names of saved bodies (shared/naming.py) and id URLs (shared/ids.py): patterns with slices,
always relative, never '..'; id_url injective, id_of its inverse."""

from __future__ import annotations

import hashlib

import pytest

from shared.ids import check_id, id_of, id_url
from shared.naming import check_pattern, name_fields, render

URL = "http://a.example:8080/docs/page.xml"
FMT = "http://a.example/item?id={}"


def test_fields_of_a_page() -> None:
    f = name_fields(URL, 42, b"body")
    assert f["host"] == "a.example:8080"
    assert (f["path"], f["ext"], f["urlid"], f["id"], f["0"]) == (
        "docs/page.xml", "xml", "42", "42", "42")
    assert f["urlhash"] == hashlib.md5(URL.encode()).hexdigest()
    assert f["sha1"] == hashlib.sha1(b"body").hexdigest()
    assert f["sha256"] == hashlib.sha256(b"body").hexdigest()
    # In an id crawl {id} is the id, found again from the URL.
    assert name_fields(id_url(FMT, "12345"), 7, None, FMT)["id"] == "12345"
    # A URL the format did not make gets a name no id can have.
    assert name_fields("http://b.example/other", 7, None, FMT)["id"] == "%u7"


@pytest.mark.parametrize(("pattern", "name"), [
    ("{host}/{urlhash}", "a.example:8080/" + hashlib.md5(URL.encode()).hexdigest()),
    ("{id[:2]}/{id}.xml", "12/12345.xml"),
    ("{0[:2]}/{0}", "12/12345"),
    ("{id[1:3]}/{id[-2:]}/{id}", "23/45/12345"),
    ("{path}/{urlid}", "docs/page.xml/42"),
    ("x-{urlid}.{ext}", "x-42.xml"),
    ("{{lit}}/{id}", "{lit}/12345"),
    ("a//{id}/", "a/12345"),
])
def test_render(pattern: str, name: str) -> None:
    assert check_pattern(pattern) is None
    fields = {**name_fields(URL, 42), "id": "12345", "0": "12345"}
    assert render(pattern, fields) == name


@pytest.mark.parametrize(("value", "name"), [
    ("..", "_"), ("../../etc/passwd", "_/_/etc/passwd"), ("/abs/x", "abs/x"), ("", "_"),
    ("a\x00b\\c\n", "a_b_c_"), (".", "_"), ("./x/./y", "_/x/_/y"),
    ("é" * 150, "é" * 100 + "~" + hashlib.sha256(("é" * 150).encode()).hexdigest()[:32]),
])
def test_no_value_escapes_the_directory(value: str, name: str) -> None:
    out = render("{id}", {"id": value})
    assert out == name
    assert not out.startswith("/") and ".." not in out.split("/")


_NOT_UNIQUE = ("no unique field: give one of {id}, {urlhash}, {urlid}, {sha1}, {sha256} whole "
               "(not sliced), or two pages may get the same name")


@pytest.mark.parametrize(("pattern", "problem"), [
    ("", "empty pattern"),
    ("/x/{id}", "an absolute path (names are relative to the output directory)"),
    ("../{id}", "a '..' segment"),
    ("a/../{id}", "a '..' segment"),
    ("{id", "unbalanced '{' at position 0 (write {{ for one)"),
    ("{id}}", "unbalanced '}' at position 4 (write }} for one)"),
    ("{nope}", ("unknown field {nope} (known: id, 0, host, path, ext, urlhash, urlid, sha1, "
               "sha256)")),
    ("{id[2]}", "unbalanced '{' at position 0 (write {{ for one)"),
    ("fixed", "no field: every page would get the same name"),
    ("{host}/{path}.{ext}", _NOT_UNIQUE),
    ("{id[:2]}/{host}", _NOT_UNIQUE),
    ("{sha1[:8]}/{urlid[1:]}", _NOT_UNIQUE),
    ("a%/{id}", "'%' in literal text (names use it for escapes)"),
    ("a\\{id}", "control characters or '\\' are not allowed"),
])
def test_bad_patterns(pattern: str, problem: str) -> None:
    assert check_pattern(pattern) == problem


IDS = ["x", "a b", "a+b", "a%20b", "%2E", "é", "a/b", "~", "A", "a&b=c", "a?b", "a#b", "...",
       "1", "01"]


@pytest.mark.parametrize("fmt", [FMT, "http://a.example/a/{}", "http://a.example/a/{}.xml",
                                 "http://a.example/{}?x=1"])
def test_id_url_is_injective_and_id_of_inverts_it(fmt: str) -> None:
    urls = [id_url(fmt, i) for i in IDS]
    assert len(set(urls)) == len(IDS)
    assert [id_of(fmt, u) for u in urls] == IDS
    assert id_of(fmt, "http://other.example/") is None


@pytest.mark.parametrize(("ident", "problem"), [
    ("", "empty id"), ("x" * 513, "id longer than 512 characters"),
    ("a\x00", "id holds a NUL or line break"), ("a\r", "id holds a NUL or line break"),
    (".", "id '.' is not allowed"), ("..", "id '..' is not allowed"),
])
def test_check_id(ident: str, problem: str) -> None:
    assert check_id(ident) == problem
    assert check_id("x" * 512) is None


def test_path_holds_the_query() -> None:
    one = render("{path}", name_fields("http://h.example/item?id=1", 1))
    two = render("{path}", name_fields("http://h.example/item?id=2", 2))
    assert one != two and one.startswith("item_") and two.startswith("item_")
    assert render("{path}", name_fields("http://h.example/item", 3)) == "item"


@pytest.mark.parametrize("ids", [("a", "a/"), ("a/b", "a%2Fb"), ("a\\b", "a_b"), ("a\x01", "a_"),
                                 ("x" * 300 + "1", "x" * 300 + "2"), ("1", "%u1")])
def test_distinct_ids_get_distinct_names(ids: tuple[str, str]) -> None:
    names = set()
    for ident in ids:
        url = id_url(FMT, ident)
        assert id_of(FMT, url) == ident
        fields = name_fields(url, 1, None, FMT)
        names.add(render("{id}", fields))
        names.add(render("{id[:2]}/{id}.xml", fields))
    assert len(names) == 4
    # The URL id of a page outside the format never looks like an id.
    assert render("{id}", name_fields("http://b.example/x", 1, None, FMT)) not in names


def test_long_segments_are_cut_with_a_hash_and_stay_distinct() -> None:
    a, b = render("{id}", {"id": "y" * 250 + "a"}), render("{id}", {"id": "y" * 250 + "b"})
    assert a != b and len(a.encode()) <= 255 and len(b.encode()) <= 255
    assert all(len(n.encode()) > 200 for n in (a, b))  # never equal to an uncut segment
