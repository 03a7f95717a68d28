"""An external site (``--site DIR --root PATH --depth D``): someone's static files, served by the
bench's own server like the generated site, crawled by every system to depth D.

The bench serves ``OUT/extsite/a`` (a symbolic link to DIR) on 127.0.0.1 and ``OUT/extsite/b``
(one page, for Harvester's small job after the crawl) on 127.0.0.2. There is no expected-pages
list: the crawls are valid when every system found the same number of pages (``judge``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.site import Site, SiteSpec


@dataclass
class ExternalSite(Site):
    """A site on disk with no expected pages; its root page at ``start_path``, depth fixed."""

    start_path: str = "/index.html"

    @property
    def start_url(self) -> str:
        return self.spec.origin_a + self.start_path


def start_path(root: str) -> str:
    """The root page's URL path: ``index.html`` → ``/index.html``, ``/`` → ``/``."""
    return "/" + root.strip().lstrip("/")


def prepare(directory: Path, root: str, depth: int, port: int, out: Path) -> ExternalSite:
    """Lay ``directory`` out for the bench server under ``out`` and describe it."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise ValueError(f"--site {directory}: not a directory")
    path = start_path(root)
    target = directory / path.lstrip("/")
    if not (target.is_file() or (target.is_dir() and (target / "index.html").is_file())):
        raise ValueError(f"--root {root}: no such page in {directory}")
    if out.exists():
        shutil.rmtree(out)
    (out / "b").mkdir(parents=True)
    (out / "a").symlink_to(directory, target_is_directory=True)
    (out / "b" / "index.html").write_text(
        "<!DOCTYPE html><html><head><title>bench</title></head>"
        "<body><p>The bench's small job.</p></body></html>\n")
    files = [f for f in directory.rglob("*") if f.is_file()]
    meta: dict[str, Any] = {"directory": str(directory), "root": path, "depth": depth,
                            "files": len(files),
                            "html_files": sum(f.suffix in (".html", ".htm") for f in files),
                            "bytes": sum(f.stat().st_size for f in files)}
    spec = SiteSpec(pages=0, seed=0, port=port)
    return ExternalSite(out, spec, [], [], depth - 1, meta, start_path=path)


def judge(runs: list[dict[str, Any]]) -> int | None:
    """With no expected pages, the crawls are valid when all found the same number of pages:
    mark the others INVALID with every system's count; return that number (None if they differ
    or none finished)."""
    counts = {r["label"] + " " + r["system"]: r.get("found", 0) for r in runs}
    finished = [r for r in runs if "wall" in r and not r.get("error")]
    agreed = {r.get("found", 0) for r in finished}
    if len(agreed) == 1 and len(finished) == len(runs):
        return agreed.pop()
    text = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    for r in runs:
        r["valid"] = False
        r.setdefault("error", f"page counts differ: {text}")
    return None
