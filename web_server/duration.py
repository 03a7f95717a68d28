"""Format durations exactly like Go's time.Duration.String()."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal

_NANOSECOND = 1
_MICROSECOND = 1_000
_MILLISECOND = 1_000_000
_SECOND = 1_000_000_000


def format_go_duration(seconds: float) -> str:
    """Render ``seconds`` as Go's Duration.String() does, rounded to whole nanoseconds."""
    return format_go_nanoseconds(_to_nanoseconds(seconds))


def _to_nanoseconds(seconds: float) -> int:
    """Round a number of seconds to whole nanoseconds (half to even), exactly."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds!r}")
    exact = Decimal(repr(float(seconds))).scaleb(9)
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def format_go_nanoseconds(nanoseconds: int) -> str:
    """Go's Duration.String() for an integer number of nanoseconds."""
    magnitude = abs(nanoseconds)
    if magnitude == 0:
        return "0s"
    if magnitude < _SECOND:
        text = _format_small(magnitude)
    else:
        text = _format_large(magnitude)
    return "-" + text if nanoseconds < 0 else text


def _format_small(u: int) -> str:
    """Below one second: a single ns, µs or ms unit with a fraction."""
    if u < _MICROSECOND:
        return f"{u}ns"
    if u < _MILLISECOND:
        return _with_fraction(u, 3) + "\u00b5s"
    return _with_fraction(u, 6) + "ms"


def _format_large(u: int) -> str:
    """One second or more: [h][m]s, seconds carrying the fraction."""
    whole_seconds, fraction = divmod(u, _SECOND)
    text = f"{whole_seconds % 60}{_fraction(fraction, 9)}s"
    minutes = whole_seconds // 60
    if minutes == 0:
        return text
    text = f"{minutes % 60}m{text}"
    hours = minutes // 60
    if hours == 0:
        return text
    return f"{hours}h{text}"


def _with_fraction(value: int, precision: int) -> str:
    """value / 10**precision with trailing zeros (and a bare point) omitted."""
    whole, fraction = divmod(value, 10**precision)
    return f"{whole}{_fraction(fraction, precision)}"


def _fraction(fraction: int, precision: int) -> str:
    """The ".ddd" of fraction / 10**precision without trailing zeros; "" when zero."""
    digits = f"{fraction:0{precision}d}".rstrip("0")
    return "." + digits if digits else ""
