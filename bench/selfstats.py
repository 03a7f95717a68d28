"""What a measured process reports about itself: its CPU seconds and its peak RSS."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float | None:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's RSS at fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
