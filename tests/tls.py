"""Self-signed certificates for the TLS tests (NATS, PostgreSQL), made by ``openssl req -x509``
for 127.0.0.1 and localhost: each one is its own CA."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A fresh certificate and its key (``name``.pem, ``name``-key.pem in ``directory``), for
    CN 127.0.0.1 with subjectAltName IP:127.0.0.1 and DNS:localhost."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key
