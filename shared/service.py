"""What every tier's ``__main__`` shares: flags, logging set-up (secrets blanked out:
``shared.secrets``), signals, and the run loop (and its loops' ``sleep_unless``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from shared import secrets
from shared.config import Settings, load_settings
from shared.errors import ConfigError, StartupError
from shared.heap import keep_heap
from shared.logfmt import JsonFormatter


def parse_flags(prog: str, argv: Sequence[str] | None, *, with_addr: bool = False,
                with_kind: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, prefix_chars="-")
    p.add_argument("-config", "--config", dest="config", default=None,
                   help="JSON config file (the original Harvester's keys are accepted)")
    if with_addr:
        p.add_argument("-addr", "--addr", dest="addr", default=None,
                       help="HOST:PORT to listen on; overrides httpAddr")
    if with_kind:
        p.add_argument("-kind", "--kind", dest="kind", default=None,
                       help="fetcher kinds to serve, each KIND or KIND=CONCURRENCY, comma "
                            "separated (http,browser=4); overrides workerKinds")
    p.add_argument("-log-level", "--log-level", dest="log_level", default=None,
                   help="DEBUG, INFO, WARNING or ERROR; overrides logLevel")
    p.add_argument("-log-format", "--log-format", dest="log_format", default=None,
                   choices=("text", "json"), help="text or json (one object a line); "
                   "overrides logFormat")
    p.add_argument("-metrics-addr", "--metrics-addr", dest="metrics_addr", default=None,
                   help="HOST:PORT of /metrics, /healthz, /readyz (foreman and worker); "
                        "overrides metricsAddr")
    return p.parse_args(argv)


def settings_from_flags(args: argparse.Namespace,
                        env: Mapping[str, str] | None = None) -> Settings:
    """The settings of a tier: its config file, the environment, then its flags; ConfigError
    (its source, the file or the flag, named) on anything bad."""
    overrides: dict[str, Any] = {"log_level": args.log_level,
                                 "http_addr": getattr(args, "addr", None),
                                 "log_format": getattr(args, "log_format", None),
                                 "metrics_addr": getattr(args, "metrics_addr", None)}
    settings = load_settings(args.config, env, **overrides)
    kind = getattr(args, "kind", None)
    if kind is None:
        return settings
    kinds = parse_kinds(kind)
    try:
        settings.check_kind(*kinds)
    except ValueError as e:
        raise ConfigError("-kind", str(e)) from None
    return settings.model_copy(update={"worker_kinds": {
        k: n or settings.concurrency for k, n in kinds.items()}})


def parse_kinds(text: str) -> dict[str, int | None]:
    """``-kind``'s value: ``http,browser=4`` -> {"http": None, "browser": 4} (None: the
    ``concurrency`` setting); ConfigError for a bad one."""
    kinds: dict[str, int | None] = {}
    for item in text.split(","):
        kind, eq, n = (part.strip() for part in item.partition("="))
        if not kind:
            raise ConfigError("-kind", "empty kind (use KIND or KIND=CONCURRENCY, comma "
                              "separated, e.g. http,browser=4)")
        if eq and not (n.isascii() and n.isdigit() and int(n) > 0):
            raise ConfigError("-kind", f"{item.strip()!r}: concurrency must be a whole number "
                              "above 0")
        if kind in kinds:
            raise ConfigError("-kind", f"{kind!r} named twice")
        kinds[kind] = int(n) if eq else None
    return kinds


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(prog: str, run: Callable[[Settings, asyncio.Event], Awaitable[None]],
         argv: Sequence[str] | None = None, *, with_addr: bool = False,
         with_kind: bool = False) -> int:
    """Parse flags, load settings (one-line error on a bad config), run until SIGTERM/SIGINT.

    Exit status: 0 after a stop, 2 for a bad config (found at load or once started: a token
    file, the NATS options ...), 1 when the tier cannot start (one line on stderr: its port is
    taken ...); any other failure is a traceback and status 1."""
    args = parse_flags(prog, argv, with_addr=with_addr, with_kind=with_kind)
    try:
        settings = settings_from_flags(args)
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    secrets.install(settings)  # every secret, and every URL's credentials, blanked from the log
    install_uvloop()
    keep_heap()  # pages are allocated and freed over and over: keep the heap between them
    try:
        return asyncio.run(_run(run, settings))
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile: a tier's loop between rounds."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _until(stop: asyncio.Event) -> None:
    """Until ``stop`` is set, without counting as the tier's look at it."""
    await asyncio.Event.wait(stop)


# How long a tier that serves may take to stop after its shutdown timeout before it is cancelled.
STOP_MARGIN = 10.0


class _StopEvent(asyncio.Event):
    """The tier's stop event, remembering whether the tier has looked at it yet. Tiers look at it
    once they serve; before that they are starting (connecting, retrying while PostgreSQL or NATS
    is unreachable), with nothing in hand to finish, and a stop cancels them at once."""

    watched = False

    def is_set(self) -> bool:
        self.watched = True
        return super().is_set()

    async def wait(self) -> Literal[True]:
        self.watched = True
        return await super().wait()


async def _run(run: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings) -> int:
    """Run the tier until it returns. SIGTERM/SIGINT sets its stop event; a tier still starting is
    cancelled at once; one serving gets ``shutdownTimeout`` + STOP_MARGIN to finish, then it is
    cancelled; a second signal cancels it at once."""
    stop = _StopEvent()
    task: asyncio.Future[None] = asyncio.ensure_future(run(settings, stop))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1 or not stop.watched:
            task.cancel()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    stopping: asyncio.Future[None] = asyncio.ensure_future(_until(stop))
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=settings.shutdown_timeout + STOP_MARGIN)
            if not task.done():
                logging.getLogger(__name__).warning("still stopping after %.0fs; cancelled",
                                                    settings.shutdown_timeout + STOP_MARGIN)
                task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not signals:
                raise
    finally:
        stopping.cancel()
    return 0
