"""systemd's notify protocol (``Type=notify`` units): one datagram of ``KEY=value`` lines to
``$NOTIFY_SOCKET``. A worker sends ``READY=1`` when it serves (or knows it cannot: then with a
``STATUS=``) and ``WATCHDOG=1`` with each heartbeat, so ``WatchdogSec`` restarts a worker whose
event loop is stuck. Without ``$NOTIFY_SOCKET`` (not under systemd) it does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_failed = False  # a send that failed is logged once per process


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``, ``"WATCHDOG=1"``) in one datagram;
    whether one was sent. Never raises: systemd being away must not stop a worker."""
    global _failed
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not fields:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(fields).encode(), addr)
    except OSError as e:
        if not _failed:
            log.warning("sd_notify to %s failed: %s", addr.lstrip("\0"), e)
            _failed = True
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")
