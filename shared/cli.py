"""The ``harvester`` command: up, migrate, web-server, foreman, worker, demo-site."""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.config import load_settings
from shared.errors import ConfigError

TIERS = {"web-server": "web_server", "foreman": "foreman", "worker": "worker"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TIERS:
        # Each tier owns its flags; run its __main__ as `python -m <tier>` would.
        sys.argv = [f"harvester {argv[0]}", *argv[1:]]
        runpy.run_module(TIERS[argv[0]], run_name="__main__", alter_sys=True)
        return 0
    p = argparse.ArgumentParser(prog="harvester", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="run everything on the embedded PostgreSQL and NATS")
    u.add_argument("-config", "--config", dest="config")
    u.add_argument("-addr", "--addr", dest="addr", default="127.0.0.1:8080")
    u.add_argument("--data-dir", type=Path, default=Path(".harvester"))
    u.add_argument("--workers", type=int, default=2)
    m = sub.add_parser("migrate", help="apply the database migrations")
    m.add_argument("-config", "--config", dest="config")
    m.add_argument("--revision", default="head")
    d = sub.add_parser("demo-site", help="serve the local demo site")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8081)
    for tier in TIERS:
        sub.add_parser(tier, help=f"run the {tier} tier (flags: -config FILE"
                       + (", -addr HOST:PORT)" if tier == "web-server" else ")"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "up":
        from shared.supervisor import up
        if args.workers < 1:
            p.error("--workers must be at least 1")
        try:
            load_settings(args.config)  # fail now, not in every tier after the servers start
        except ConfigError as e:
            print(f"harvester up: config error: {e}", file=sys.stderr)
            return 2
        return up(args.config, args.addr, args.data_dir, args.workers)
    if args.command == "migrate":
        try:
            settings = load_settings(args.config)
        except ConfigError as e:
            print(f"harvester migrate: config error: {e}", file=sys.stderr)
            return 2
        from shared.db import migrate
        migrate.upgrade(settings.database_url, args.revision)
        return 0
    if args.command == "demo-site":
        from shared.demo_site import serve
        serve(args.host, args.port)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
