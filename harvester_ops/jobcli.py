"""The ``harvester`` client commands: crawl, status, result, jobs, cancel, pause, resume and
workers, against a running web server (``--server``, else ``HARVESTER_SERVER``, else
``http://127.0.0.1:8080``: what ``make run`` serves), with ``--token`` (else
``HARVESTER_TOKEN``) as its bearer token when the server wants one. Exit status: 0 done (the job
completed), 1 server unreachable or an error, 2 usage, 3 the job was cancelled."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from harvester_ops.client import ApiError, Client

COMMANDS = ("crawl", "status", "result", "jobs", "cancel", "pause", "resume", "workers")
DEFAULT_SERVER = "http://127.0.0.1:8080"
OK, ERROR, USAGE, CANCELLED = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harvester", description=__doc__)
    p.add_argument("--server", default=os.environ.get("HARVESTER_SERVER") or DEFAULT_SERVER,
                   help="the web server's base URL (env HARVESTER_SERVER)")
    p.add_argument("--token", default=os.environ.get("HARVESTER_TOKEN") or None,
                   help="an API bearer token (env HARVESTER_TOKEN; prefer the environment: "
                   "a command line is visible to other users)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crawl", help="submit a job")
    c.add_argument("urls", nargs="+", metavar="URL")
    c.add_argument("--depth", type=int)
    c.add_argument("--force", action="store_true", help="fetch again even when stored")
    c.add_argument("--wait", action="store_true", help="show progress until it completes")
    for name in ("status", "cancel", "pause", "resume"):
        sub.add_parser(name, help=f"{name} a job").add_argument("id", type=int)
    r = sub.add_parser("result", help="a job's result")
    r.add_argument("id", type=int)
    r.add_argument("--format", choices=("json", "jsonl", "csv", "tree"), default="json")
    j = sub.add_parser("jobs", help="jobs, newest first")
    j.add_argument("--state", choices=("running", "paused", "cancelled", "completed"))
    sub.add_parser("workers", help="live workers")
    return p


def main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else OK
    client = Client(args.server, args.token)
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    try:
        return _command(client, args, out)
    except ApiError as e:
        print(f"harvester {args.command}: {e}", file=sys.stderr)
        return ERROR
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        print(f"harvester {args.command}: {args.server} unreachable: {e}", file=sys.stderr)
        return ERROR


def _command(client: Client, args: argparse.Namespace, out: Console) -> int:
    cmd = args.command
    if cmd == "crawl":
        job_id = client.submit(args.urls, args.depth, args.force)
        if not args.wait:
            out.print(json.dumps({"jobId": job_id}))
            return OK
        final = asyncio.run(_watch(client, job_id, Console(file=sys.stderr)))
        _summary(out, job_id, final)
        return CANCELLED if final.get("state") == "cancelled" else OK
    if cmd == "status":
        _json(out, client.status(args.id))
    elif cmd == "result":
        if args.format == "tree":
            _tree(out, client.status(args.id), json.loads(client.result(args.id)))
        else:
            sys.stdout.write(client.result(args.id, args.format))
    elif cmd == "jobs":
        _json(out, client.jobs(args.state))
    elif cmd == "workers":
        _json(out, client.workers())
    else:
        _json(out, getattr(client, cmd)(args.id))
    return OK


def _json(out: Console, data: Any) -> None:
    out.print(json.dumps(data, indent=2, ensure_ascii=False), markup=False)


async def _watch(client: Client, job_id: int, err: Console) -> dict[str, Any]:
    """A progress bar fed by the job's server-sent events; the last status."""
    final: dict[str, Any] = {}
    columns = (TextColumn("job {task.fields[job]}"), BarColumn(),
               TextColumn("fetched {task.fields[fetched]} queued {task.fields[queued]} "
                          "failed {task.fields[failed]} {task.fields[rate]} pages/s "
                          "ETA {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("crawl", total=None, job=job_id, fetched=0, queued=0,
                                 failed=0, rate="-", eta="-")
        async for event, data in client.events(job_id):
            final = data
            pages = data.get("pages") or {}
            eta = (data.get("eta") or {}).get("seconds")
            rate = (data.get("rates") or {}).get("pagesPerSecond")
            processed, queued = pages.get("processed", 0), pages.get("queued", 0)
            progress.update(task, total=processed + queued or None, completed=processed,
                            fetched=pages.get("fetched", 0), queued=queued,
                            failed=pages.get("failed", 0), rate="-" if rate is None else rate,
                            eta="-" if eta is None else f"{eta:.0f}s")
            if event == "completed":
                break
    return final


def _summary(out: Console, job_id: int, st: dict[str, Any]) -> None:
    table = Table(title=f"job {job_id}: {st.get('state', 'completed')}")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for k, v in (st.get("pages") or {}).items():
        table.add_row(k, str(v))
    table.add_row("elapsed", str(st.get("elapsed", "")))
    out.print(table)


def _tree(out: Console, status: dict[str, Any], links: dict[str, list[str]]) -> None:
    """The result as a tree from each job URL: each page once, at its first place."""
    seen: set[str] = set()

    def grow(node: Tree, url: str, depth: int) -> None:
        for link in links.get(url, []):
            child = node.add(Text(link), highlight=False)
            if link not in seen and depth < 50:
                seen.add(link)
                grow(child, link, depth + 1)

    for url in status.get("urls") or links:
        seen.add(url)
        root = Tree(Text(url), highlight=False)
        grow(root, url, 0)
        out.print(root)
