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
    assert name_fields("http://b.example/other", 7, None, FMT)["id"] == "7"


@pytest.mark.parametrize(("pattern", "name"), [
    ("{host}/{urlhash}", "a.example:8080/" + hashlib.md5(URL.encode()).hexdigest()),
    ("{id[:2]}/{id}.xml", "12/12345.xml"),
    ("{0[:2]}/{0}", "12/12345"),
    ("{id[1:3]}/{id[-2:]}", "23/45"),
    ("{path}", "docs/page.xml"),
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
    ("a\x00b\\c\n", "a_b_c_"), (".", "_"), ("./x/./y", "_/x/_/y"), ("é" * 150, "é" * 100),
])
def test_no_value_escapes_the_directory(value: str, name: str) -> None:
    out = render("{id}", {"id": value})
    assert out == name
    assert not out.startswith("/") and ".." not in out.split("/")


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
