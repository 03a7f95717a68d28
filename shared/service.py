"""What every tier's ``__main__`` shares: flags, logging set-up, signals, and the run loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from shared.config import Settings, load_settings
from shared.errors import ConfigError, StartupError


def parse_flags(prog: str, argv: Sequence[str] | None, *, with_addr: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, prefix_chars="-")
    p.add_argument("-config", "--config", dest="config", default=None,
                   help="JSON config file (the original Harvester's keys are accepted)")
    if with_addr:
        p.add_argument("-addr", "--addr", dest="addr", default=None,
                       help="HOST:PORT to listen on; overrides httpAddr")
    p.add_argument("-log-level", "--log-level", dest="log_level", default=None,
                   help="DEBUG, INFO, WARNING or ERROR; overrides logLevel")
    return p.parse_args(argv)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(prog: str, run: Callable[[Settings, asyncio.Event], Awaitable[None]],
         argv: Sequence[str] | None = None, *, with_addr: bool = False) -> int:
    """Parse flags, load settings (one-line error on a bad config), run until SIGTERM/SIGINT.

    Exit status: 0 after a stop, 2 for a bad config, 1 when the tier cannot start (one line on
    stderr: its port is taken ...); any other failure is a traceback and status 1."""
    args = parse_flags(prog, argv, with_addr=with_addr)
    overrides = {"log_level": args.log_level}
    if with_addr:
        overrides["http_addr"] = args.addr
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    install_uvloop()
    try:
        return asyncio.run(_run(run, settings))
    except StartupError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


async def _run(run: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)
    return 0
