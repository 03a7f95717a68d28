"""sd_notify: READY/STATUS/WATCHDOG datagrams to ``$NOTIFY_SOCKET`` (a fake systemd here: a
datagram socket of the test's own); nothing without the variable."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import sdnotify


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_and_watchdog_datagrams(systemd: socket.socket) -> None:
    assert sdnotify.ready()
    assert systemd.recv(4096) == b"READY=1"
    assert sdnotify.ready("unhealthy: init failed: m:f: ValueError: no")
    assert systemd.recv(4096) == b"READY=1\nSTATUS=unhealthy: init failed: m:f: ValueError: no"
    assert sdnotify.watchdog()
    assert systemd.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping()
    assert systemd.recv(4096) == b"STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"harvester-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_nothing_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    assert not sdnotify.watchdog()


def test_a_gone_systemd_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not sdnotify.watchdog()
