"""The browser bench (issue 12): the JavaScript site hides every page link from an HTTP fetch
and its scripts' data make the expected graph; the Harvester/Crawlee ratios."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import report
from bench.jssite import generate, node_path
from bench.site import SiteSpec
from shared.urls import canonicalize, resolve
from worker.extractors.links_html import extract_links

_DATA = re.compile(rb'<script type="application/json" id="link-data">(.*?)</script>')


def test_links_exist_only_in_script_data(tmp_path: Path) -> None:
    spec = SiteSpec(pages=60, seed=3, port=18999)
    site = generate(spec, tmp_path / "js")
    assert len(site.expected) == 60 == len(set(site.expected))
    assert site.start_url in site.expected and site.max_level >= 2
    assert (site.root / "a" / "static" / "app.js").exists()
    assert (site.root / "b" / "index.html").exists()  # for the bench's small job
    found: set[str] = {site.start_url}
    for i in range(60):
        url = spec.origin_a + node_path(i)
        body = (site.root / "a" / (node_path(i).lstrip("/") or "index.html")).read_bytes()
        # What an HTTP fetcher extracts: the app script, no page.
        assert extract_links(body, url) == [canonicalize(spec.origin_a + "/static/app.js")]
        m = _DATA.search(body)
        assert m is not None
        links = json.loads(m.group(1))
        assert 10 <= len(links) <= 30
        found |= {resolve(url, href) for href, _ in links}  # type: ignore[misc]
    assert found == set(site.expected)
    again = generate(spec, tmp_path / "js")  # cached: not rewritten
    assert again.expected == site.expected and again.meta == site.meta


def _summary(system: str, wall: float, cpu: float) -> dict[str, object]:
    run = {"system": system, "label": "r1", "valid": True, "found": 100, "wall": wall,
           "cpu": cpu, "browser_pages": 4, "browser_workers": 1, "repeat": 1}
    return report.summarize([run], 100)


def test_browser_ratios() -> None:
    h, c = _summary("harvester-browser", 10.0, 20.0), _summary("crawlee", 20.0, 30.0)
    runs = [{"system": "harvester-browser", "valid": True, "repeat": r, "wall": 10.0 * r,
             "cpu": 20.0} for r in (1, 2)]
    runs += [{"system": "crawlee", "valid": True, "repeat": r, "wall": 20.0, "cpu": 40.0}
             for r in (1, 2)]
    lines = report.browser_ratios({"harvester-browser": h, "crawlee": c}, runs)
    assert lines[0] == ("* Harvester browser / Crawlee: pages/s × **2**, CPU per page × "
                        "**0.667** (target × ≥ 1 at × ≤ 1: met)")
    assert lines[1] == ("* per repeat: r1: pages/s × 2, CPU/page × 0.5; "
                        "r2: pages/s × 1, CPU/page × 0.5")
    slow = _summary("harvester-browser", 40.0, 20.0)
    assert "**missed**" in report.browser_ratios({"harvester-browser": slow, "crawlee": c},
                                                 [])[0]
    assert report.browser_ratios({"crawlee": c}, []) == []
    table = report.table([h, c])
    assert "| harvester-browser (1 browser worker × 4 tabs) | 100 / 100 | 10.0 | 10 |" in table
    assert "| crawlee (4 pages) | 100 / 100 | 20.0 | 5 |" in table
