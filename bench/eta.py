"""How good the ETA of ``GET /status`` is (docs/status.md): from the samples a bench run took
of a crawl, ``(t, processed, eta)`` with ``t`` seconds since the job was posted, the relative
error of the ETA shown when the crawl was 25, 50 and 75 % done.

The error at a point is ``(t + eta − T) / (T − t)``, T the time the crawl finished: 0 is exact,
+0.5 promised half as long again as it took, −0.5 half of the time it took. The point is the
first sample with ``processed ≥ p · N``, N the pages processed in all."""

from __future__ import annotations

from collections.abc import Sequence

POINTS = (0.25, 0.50, 0.75)

Sample = tuple[float, int, float | None]  # (t, pages processed, eta seconds or None)


def errors(samples: Sequence[Sample], finish: float,
           points: Sequence[float] = POINTS) -> dict[str, float | None]:
    """The ETA's relative error at each point of the crawl (``"25%"`` ...); None where no
    sample reached the point before the finish, or the ETA shown there was null."""
    total = max((s[1] for s in samples), default=0)
    out: dict[str, float | None] = {}
    for p in points:
        key = f"{p:.0%}"
        at = next((s for s in samples if s[1] >= p * total and s[0] < finish), None)
        if at is None or at[2] is None or total == 0:
            out[key] = None
            continue
        t, _, eta = at
        out[key] = round((t + eta - finish) / (finish - t), 3)
    return out
