"""The ``harvester`` command: up, migrate, web-server, foreman, worker, demo-site, and the
client commands (harvester_ops/jobcli.py): crawl, status, result, jobs, cancel, pause,
resume, workers; ``token NAME [--admin]`` makes an API token."""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from harvester_ops import jobcli
from shared.config import load_settings
from shared.errors import ConfigError, DependencyUnavailable

TIERS = {"web-server": "web_server", "foreman": "foreman", "worker": "worker"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in jobcli.COMMANDS or argv[0].startswith(("--server", "--token"))):
        return jobcli.main(argv)  # the client commands, against a running web server
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
    u.add_argument("--workers", type=int, default=2, help="http worker processes")
    u.add_argument("--nats-cluster", type=int, default=1, metavar="N",
                   help="run N clustered nats-servers, streams replicated on up to 3 (default 1)")
    u.add_argument("--browser-workers", type=int, default=0,
                   help="browser worker processes (one Chromium each; needs browserPath, "
                        "make browser installs Debian's chromium)")
    u.add_argument("--browser-pages", type=int, default=4,
                   help="tabs (pages fetched at once) in each browser worker's Chromium")
    u.add_argument("-log-level", "--log-level", dest="log_level", default=None,
                   help="DEBUG, INFO, WARNING or ERROR, for every tier; overrides logLevel")
    u.add_argument("-log-format", "--log-format", dest="log_format", default=None,
                   choices=("text", "json"), help="for every tier; overrides logFormat")
    u.add_argument("--metrics-port-base", type=int, default=0,
                   help="metrics ports on 127.0.0.1: the foreman's, the workers' the next ones "
                        "(e.g. 9101: foreman 9101, workers 9102 ...); 0 (default): off")
    m = sub.add_parser("migrate", help="apply the database migrations")
    m.add_argument("-config", "--config", dest="config")
    m.add_argument("--revision", default="head")
    t = sub.add_parser("token", help="make a fresh API token: its environment and token-file "
                       "lines, and the authTokens entry (its digest) for a config file")
    t.add_argument("name")
    t.add_argument("--admin", action="store_true", help="sees every job; /workers, /sessions")
    d = sub.add_parser("demo-site", help="serve the local demo site")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8081)
    for tier in TIERS:
        sub.add_parser(tier, help=f"run the {tier} tier (flags: -config FILE"
                       + {"web-server": ", -addr HOST:PORT)",
                          "worker": ", -kind KIND[=N],...)"}.get(tier, ")"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "up":
        from harvester_ops.supervisor import up
        if args.workers < 0 or args.browser_workers < 0 or args.browser_pages < 1:
            p.error("--workers and --browser-workers must be at least 0, --browser-pages 1")
        if args.nats_cluster < 1:
            p.error("--nats-cluster must be at least 1")
        if args.workers + args.browser_workers < 1:
            p.error("--workers must be at least 1 (or --browser-workers at least 1)")
        try:  # fail now, not in every tier after the servers start
            settings = load_settings(args.config, http_addr=args.addr, log_level=args.log_level)
        except ConfigError as e:
            print(f"harvester up: config error: {e}", file=sys.stderr)
            return 2
        path = settings.browser_path
        if args.browser_workers and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            print(f"harvester up: no Chromium at {path} (browserPath, HARVESTER_BROWSER_PATH): "
                  "run make browser (Debian's chromium) or set browserPath", file=sys.stderr)
            return 2
        logging.getLogger().setLevel(settings.log_level)
        kinds = settings.fetcher_kinds
        if args.browser_workers and "browser" not in kinds:
            kinds = (*kinds, "browser")
        return up(args.config, args.addr, args.data_dir, args.workers, args.log_level,
                  args.log_format, args.metrics_port_base, browser_workers=args.browser_workers,
                  browser_pages=args.browser_pages, fetcher_kinds=kinds,
                  nats_cluster=args.nats_cluster)
    if args.command == "migrate":
        return _migrate(args.config, args.revision)
    if args.command == "token":
        return _token(p, args.name, args.admin)
    if args.command == "demo-site":
        from harvester_ops.demo_site import serve
        serve(args.host, args.port)
        return 0
    return 2


def _token(p: argparse.ArgumentParser, name: str, admin: bool) -> int:
    """A fresh token (``secrets.token_urlsafe(32)``) as the three places can take it."""
    import json
    import secrets

    from shared.config import AUTH_TOKEN_NAME, token_digest
    if not AUTH_TOKEN_NAME.fullmatch(name):
        p.error("token: the name is 1 to 64 of A-Z a-z 0-9 _ . @ -")
    token = secrets.token_urlsafe(32)
    entry = {"name": name, "sha256": token_digest(token), "admin": admin}
    print(f"token:          {token}")
    print(f"environment:    HARVESTER_AUTH_TOKENS={name}:{token}{':admin' if admin else ''}")
    print(f"token file:     {name} {token}{' admin' if admin else ''}")
    print(f"config (authTokens entry): {json.dumps(entry)}")
    print(f"client:         HARVESTER_TOKEN={token} harvester jobs")
    return 0


def _migrate(config: str | None, revision: str) -> int:
    from alembic.util import CommandError

    from harvester_ops import migrate
    try:
        settings = load_settings(config)
    except ConfigError as e:
        print(f"harvester migrate: config error: {e}", file=sys.stderr)
        return 2
    try:
        migrate.upgrade(settings.database_url, revision)
    except (DependencyUnavailable, CommandError) as e:  # unreachable; an unknown revision
        print(f"harvester migrate: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
