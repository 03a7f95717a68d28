"""Rank functions in a py-spy ``record -f raw`` profile (collapsed stacks, idle excluded)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def hotspots(raw: Path, top: int = 15) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(function, self %)], [(function, inclusive %)])."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return 0, [], []
    pct = 100.0 / total
    return (total, [(f, c * pct) for f, c in own.most_common(top)],
            [(f, c * pct) for f, c in incl.most_common(top * 3)])


def render(raw: Path, top: int = 15) -> str:
    total, own, incl = hotspots(raw, top)
    if not total:
        return f"(no samples in {raw})"
    out = [f"{total} samples (busy only). Self time:", "", "| function | self % |", "|---|---:|"]
    out += [f"| `{f}` | {p:.1f} |" for f, p in own]
    out += ["", "Inclusive time:", "", "| function | incl. % |", "|---|---:|"]
    out += [f"| `{f}` | {p:.1f} |" for f, p in incl]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15))
