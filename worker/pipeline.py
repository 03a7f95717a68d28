"""One visit, step by step: (admitted by the host gate, in ``worker.crawl``) fetch -> extract ->
task -> outputs -> commit. The steps are chosen per job (``JobPlan``, resolved once per job per
process by ``JobPlans``) from the plug-in registries; a step the job has nothing for costs
nothing. Whatever happens, a visit's messages are settled and its slots given back: it is
committed (``worker.commit``), or back in the frontier, or redelivered."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared import bus, metrics
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.db import jobs, visits
from shared.db.frontier import Frontier
from shared.db.pool import RETRYABLE
from shared.errors import ConfigError
from shared.fingerprint import JobFingerprint
from shared.jobspec import OUTPUT_MODELS, ExtractSpec, SaveSpec, reads_any_body
from shared.model import Extraction, FetchedPage, Yield
from shared.robots import BLOCKED_PREFIX
from shared.urls import host_key
from worker.commit import Committer, Done, Key, describe
from worker.extractors import EXTRACTORS, ExtractFailed, ExtractLater, Extractor
from worker.extractors.lanes import Parser
from worker.extractors.links import HtmlLinks
from worker.fetchers import Fetcher, FetchRequest, HopGate, Validators
from worker.gate import HostGate, Slot
from worker.health import HealthMonitor
from worker.loader import Loader
from worker.outputs import OUTPUTS, Output
from worker.outputs.db import close_pools
from worker.retry import RetryDecision, RetryPolicy
from worker.sessions import SessionBroker, SessionRules
from worker.sources import SOURCES, Source
from worker.stats import WorkerStats
from worker.taskfuncs import PageTask
from worker.tasks import Context, RetryLater, Task

log = logging.getLogger(__name__)

NO_LANE_DELAY = timedelta(seconds=30)  # a page no parser process was free for waits this
# An output's errors that may mend (a full disk, a lost NFS mount or PostgreSQL connection):
# the visit is tried again later; those of NOT_MENDING are the job's pattern's (a file where a
# directory must be), which another try does not mend.
MAY_MEND: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresConnectionError,
                                             asyncpg.InterfaceError, *RETRYABLE)
NOT_MENDING = (NotADirectoryError, IsADirectoryError, FileExistsError)


@dataclass(slots=True)
class PlanUse:
    """How a plan with outputs is used: visits going through it now, and when one last did
    (``time.monotonic``); ``JobPlans.close_idle`` closes its outputs once idle."""
    inflight: int = 0
    last: float = field(default_factory=time.monotonic)

    def enter(self) -> None:
        self.inflight += 1
        self.last = time.monotonic()

    def leave(self) -> None:
        self.inflight -= 1
        self.last = time.monotonic()


@dataclass(frozen=True, slots=True)
class JobPlan:
    """A job's steps: its fetcher and source, its extractors (the source's links first), its
    task and outputs, its retry rule, its rule set, whether its outputs need raw answers,
    which answers' bodies to read (None: the source's ``wants_body``), and the options its
    fetcher gets with each request (a browser job's ``browser`` spec; else empty).
    ``sessions``: each attempt carries one session of the job's pool (None: none, no cost);
    ``private``: its answers are its own (sessions, or headers in its fingerprint, or a
    fingerprint that rewrites its links: its version's link set, ``url_links``, is the
    rewritten one): recorded not cacheable, without validators, so no other job is answered
    from them;
    ``rewrite``: its fingerprint's rewrite of a page's links (None: they stay as they are)."""
    job_id: int
    fetcher: Fetcher
    source: Source
    extractors: tuple[Extractor, ...]
    task: Task | None
    outputs: tuple[Output, ...]
    policy: RetryPolicy
    ruleset: int
    keep_raw: bool
    wants_body: Callable[[int, str | None], bool] | None = None
    use: PlanUse = field(default_factory=PlanUse, compare=False)
    fetch_options: Mapping[str, Any] = field(default_factory=dict)
    sessions: SessionRules | None = None
    private: bool = False
    rewrite: Callable[[tuple[tuple[str, str], ...]], tuple[tuple[str, str], ...]] | None = None


class JobPlans:
    """Each job's plan, resolved once per job per process and kept (the last ``size`` jobs; a
    job's spec never changes). A default job (links only: rule set 0, fetched over http) needs
    no query; the others' specs (a browser job's options) are read in one query per batch that
    brings new ones. ``init`` (the worker's init values) and ``gate`` reach a job's per-page
    task (``task`` in its spec) and its loader. A job this worker cannot serve (an extractor,
    output, task or fetcher it does not have) gets the reason instead.
    A plan with outputs (its outputs keep files open, one set per job and process) is kept
    until no visit went through it for ``output_idle_close`` seconds: ``close_idle`` then
    closes its outputs and drops it (the job's next visit builds a new plan, whose outputs open
    new files); ``aclose`` closes the rest when the worker stops."""

    def __init__(self, settings: Settings, lanes: Parser, fetchers: Mapping[str, Fetcher],
                 size: int = 1024, *, init: Mapping[str, Any] | None = None,
                 gate: HopGate | None = None) -> None:
        self.settings = settings
        self.lanes = lanes
        self.fetchers = fetchers
        self.size = size
        self.init: Mapping[str, Any] = init if init is not None else {}
        self.gate = gate
        self._sources: dict[str, Source] = {}
        self.web = self._source("web")
        self._plans: OrderedDict[int, JobPlan | str] = OrderedDict()
        self._saving: dict[int, JobPlan] = {}  # the plans with outputs, not evicted by size
        self._closing: dict[int, JobPlan] = {}  # by id(plan): idle ones being closed

    async def resolve(self, conn: asyncpg.Connection,
                      planned: Iterable[visits.Planned]) -> dict[int, JobPlan | str]:
        """The plans of these visits' jobs, by job id: a plan, or why there is none."""
        out: dict[int, JobPlan | str] = {}
        missing: dict[int, visits.Planned] = {}
        for p in planned:
            if p.job_id in out or p.job_id in missing:
                continue
            plan = self._plans.get(p.job_id)
            if plan is not None:
                self._plans.move_to_end(p.job_id)
                out[p.job_id] = plan
            elif (saving := self._saving.get(p.job_id)) is not None:
                out[p.job_id] = self._keep(p.job_id, saving)
            elif p.ruleset == 0 and p.fetcher == "http":
                out[p.job_id] = self._keep(p.job_id, self._build(p, {}))
            else:
                missing[p.job_id] = p
        if missing:
            specs = await jobs.load_specs(conn, list(missing))
            for job_id, p in missing.items():
                out[job_id] = self._keep(job_id, self._build(p, specs.get(job_id, {})))
        if self._saving:
            now = time.monotonic()
            for plan in out.values():  # about to be used: not idle
                if not isinstance(plan, str) and plan.outputs:
                    plan.use.last = now
        return out

    async def close_idle(self) -> int:
        """Close the outputs of the plans no visit went through for ``output_idle_close``
        seconds and none is in (a tar gets its end blocks, files are fsynced), and drop the
        plans; returns how many. A write in flight is never closed under: its visit holds the
        plan (``PlanUse``)."""
        idle = self.settings.output_idle_close
        now = time.monotonic()
        done = 0
        for job_id, plan in list(self._saving.items()):
            if plan.use.inflight or now - plan.use.last < idle:
                continue
            del self._saving[job_id]
            if self._plans.get(job_id) is plan:
                del self._plans[job_id]
            self._closing[id(plan)] = plan
            try:
                await self._close(plan)
            finally:
                self._closing.pop(id(plan), None)
            log.info("job %d: outputs idle %.0fs, closed", job_id, now - plan.use.last)
            done += 1
        return done

    async def run_idle_close(self) -> None:
        """``close_idle`` every few seconds, until cancelled (``crawl.run``)."""
        while True:
            await asyncio.sleep(min(self.settings.output_idle_close / 2, 5.0))
            await self.close_idle()

    def put(self, plan: JobPlan) -> None:
        """Use ``plan`` for its job (tests, and jobs planned by other means)."""
        self._keep(plan.job_id, plan)

    def _keep(self, job_id: int, plan: JobPlan | str) -> JobPlan | str:
        self._plans[job_id] = plan
        if not isinstance(plan, str) and plan.outputs:
            self._saving[job_id] = plan
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return plan

    async def aclose(self) -> None:
        """Close the outputs of every plan that has any (``Output.close``, where there is
        one), once the visits in flight are drained: each close isolated, so one that fails
        leaves the others closed."""
        saving, self._saving = self._saving, {}
        closing, self._closing = self._closing, {}
        for plan in [*saving.values(), *closing.values()]:
            await self._close(plan)
        try:
            await close_pools()  # the db outputs' pool, the process's
        except Exception:
            log.exception("closing the db outputs' pool failed")

    @staticmethod
    async def _close(plan: JobPlan) -> None:
        for out in plan.outputs:
            close = getattr(out, "close", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                log.exception("closing output %s of job %d failed", out.name, plan.job_id)

    def _source(self, name: str) -> Source:
        """The source of that name, made once per process (its policy, its extractor)."""
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = SOURCES.create(name, self.settings, self.lanes)
        return source

    def _build(self, p: visits.Planned, spec: Mapping[str, Any]) -> JobPlan | str:
        """The job's plan from its stored spec: its source's (``source``, else ``web``) link
        extractor, ``follow``
        (with follow rules or ids), the ``extract`` entries; its per-page ``task``; an output
        per ``save`` entry; every 2xx body read where the job reads more than HTML
        (``reads_any_body``); its fetcher's options (``browser``); its ``sessions``, whether
        its answers are private, its fingerprint's link rewrite (and, with ``keepFragment``,
        its HTML links keeping their fragments)."""
        kind = p.fetcher
        ruleset = p.ruleset
        outputs: list[Output] = []
        try:
            fetcher = self.fetchers.get(kind)
            if fetcher is None:
                raise ConfigError("fetcher", f"kind {kind!r} is not served by this worker")
            source = self._source(spec.get("source") or "web")
            fingerprint = JobFingerprint.from_stored(spec)
            extractors = [source.link_extractor()]
            if (fingerprint is not None and fingerprint.keep_fragment
                    and isinstance(extractors[0], HtmlLinks)):  # its links keep their fragments
                extractors[0] = extractors[0].keeping_fragments()
            if spec.get("follow") or spec.get("ids"):
                extractors.append(EXTRACTORS.create(
                    "follow", self.settings, {"follow": spec.get("follow"), "ids": spec.get("ids")},
                    self.lanes))
            for i, entry in enumerate(spec.get("extract") or ()):
                try:
                    rule = ExtractSpec.model_validate(
                        entry, context={"extractors": EXTRACTORS.names()})
                except ValidationError as e:
                    raise ConfigError(f"extract[{i}]", e.errors()[0]["msg"]) from None
                extractors.append(EXTRACTORS.create(rule.kind, self.settings,
                                                    rule.model_extra or {}, self.lanes))
            url_format = (spec.get("ids") or {}).get("urlFormat")
            for i, entry in enumerate(spec.get("save") or ()):
                try:
                    save = SaveSpec.model_validate(entry, context={"outputs": OUTPUTS.names()})
                except ValidationError as e:
                    raise ConfigError(f"save[{i}]", e.errors()[0]["msg"]) from None
                options = save.options()
                if save.kind in OUTPUT_MODELS:  # a built-in: names by id, warcinfo's rule set
                    options["ruleset"] = ruleset
                    if url_format:
                        options["urlFormat"] = url_format
                outputs.append(OUTPUTS.create(save.kind, self.settings, options))
            task = self._page_task(spec.get("task"), fetcher, source.policy)
            sessions = SessionRules.from_stored(spec)
        except ConfigError as e:
            log.error("job %d cannot be served by this worker: %s", p.job_id, e)
            return f"not served by this worker: {e}"
        except Exception as e:  # a plug-in's factory refusing its options (a bad selector ...)
            log.exception("job %d cannot be served by this worker", p.job_id)
            return f"not served by this worker: {describe(e)}"
        return JobPlan(p.job_id, fetcher, source, tuple(extractors), task, tuple(outputs),
                       source.policy, ruleset, any(o.needs_raw for o in outputs),
                       any_2xx if reads_any_body(spec) else source.wants_body,
                       fetch_options=spec.get("browser") or _NO_OPTIONS, sessions=sessions,
                       private=sessions is not None or fingerprint is not None or bool(
                           (spec.get("fingerprint") or {}).get("includeHeaders")),
                       rewrite=fingerprint.link_rewrite() if fingerprint is not None else None)

    def _page_task(self, entry: Any, fetcher: Fetcher, policy: RetryPolicy) -> Task | None:
        """The job's per-page task (``{"name", "args"}``, or a bare name), None without one;
        its loader fetches through the gate with the job's fetcher."""
        if not entry:
            return None
        name, args = (entry, {}) if isinstance(entry, str) else (entry["name"],
                                                                   entry.get("args") or {})
        if name not in self.settings.tasks:
            raise ConfigError("task", f"unknown task {name!r} (not in this worker's tasks)")
        loader = Loader(self.settings, self.gate, fetcher, policy) if self.gate else None
        return PageTask(self.settings, name, args, self.init, loader)


@dataclass(slots=True)
class Visit:
    """A visit admitted to its host (``slot``), with its messages and its job's plan."""
    planned: visits.Planned
    msgs: list[Msg]
    slot: Slot
    plan: JobPlan

    @property
    def key(self) -> Key:
        return (self.planned.job_id, self.planned.url_id)

    @property
    def url(self) -> str:
        return self.planned.url


class Pipeline:
    """Runs visits through their job's steps, inline in each visit's task, holding one of the
    worker's concurrency ``slots`` while it has a request to make."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, gate: HostGate,
                 frontier: Frontier, committer: Committer, slots: asyncio.Semaphore,
                 stats: WorkerStats | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.gate = gate
        self.frontier = frontier
        self.committer = committer
        self.slots = slots
        self.retrying: Counter[str] = Counter()  # hosts with a retry waiting for a slot
        self.beat = settings.ack_wait / 3
        self.health: HealthMonitor | None = None  # set (``crawl.run``) when its thresholds are on
        self.stats = stats if stats is not None else WorkerStats()  # the process's (heartbeat)
        self.sessions = SessionBroker(settings, pool)

    async def visit(self, v: Visit) -> None:
        """Fetch, extract, run the task and the outputs, and commit one visit (or put it back
        in the frontier). Whatever goes wrong on the way is logged once, and the visit is
        recorded as failed with it: its messages are always settled, its slots always given
        back."""
        hold = _Hold(self.slots)
        use = v.plan.use if v.plan.outputs else None
        if use is not None:  # its outputs are not closed while it is in
            use.enter()
        self.stats.enter()
        try:
            try:
                done = await self._steps(v, hold)
            except Exception as e:  # a bug, a task's error, a parser on hostile HTML: not retried
                log.exception("visit of %s failed", v.url)
                done = Done(v.key, v.msgs, attempts=v.planned.attempts + 1, failure=describe(e))
            if done is not None:
                await self.committer.submit(done)
        finally:
            hold.release()
            self.stats.leave()
            if use is not None:
                use.leave()

    async def _steps(self, v: Visit, hold: _Hold) -> Done | None:
        fetched = await self.fetch(v, hold)
        if fetched is None:
            return None
        page, attempt = fetched
        if page.status is None and page.permanent and page.error is not None \
                and page.error.startswith(BLOCKED_PREFIX):
            # the SSRF guard refused the address (a redirect to it, a name resolving to it):
            # blocked with its reason, as robots.txt's refusals are; nothing stored on the URL
            metrics.count_blocked([page.error])
            log.info("job %d blocked %s: %s", v.key[0], v.url, page.error,
                     extra={"job": v.key[0], "url": v.url})
            return Done(v.key, v.msgs, attempts=attempt, reason=page.error)
        plan = v.plan
        ex = _NOTHING if plan.ruleset == 0 else Extraction(ruleset=plan.ruleset)
        if page.body is not None:
            extracted = await self.extract(v, page, attempt)
            if extracted is None or isinstance(extracted, Done):
                return extracted
            page, ex = extracted
        log.info("job %d fetched %s: %s", v.key[0], v.url, page.error or page.status,
                 extra={"job": v.key[0], "url": v.url})
        if self.settings.work_delay:
            await asyncio.sleep(self.settings.work_delay)
        if plan.task is not None or plan.outputs:
            ctx = Context(v.key[0], v.key[1], v.url, attempt)
            if plan.task is not None:
                try:
                    async with bus.KeepAlive(v.msgs, self.beat):
                        ex = await plan.task(ctx, page, ex)
                except RetryLater as e:
                    return await self._retry_later(v, attempt, e)
            if plan.outputs:
                try:
                    written = await self.write_outputs(v, ctx, page, ex)
                except RetryLater as e:  # a full disk, PostgreSQL away: may mend
                    return await self._retry_later(v, attempt, e, "output")
                if isinstance(written, Done):
                    return written
                ex = written
        if ex.ruleset and ex.yields:
            bad = _not_json(ex.yields)
            if bad is not None:  # not storable: this visit fails, before the commit
                log.warning("visit of %s failed: %s", v.url, bad)
                return Done(v.key, v.msgs, replace(page, body=None, raw=None), attempt,
                            failure=bad, extraction=Extraction(ex.links))
        extra: tuple[str, ...] = ()
        p = v.planned
        if p.sitemaps and p.level == 0 and p.max_level > 1 and self.settings.robots \
                and not page.failed:
            async with bus.KeepAlive(v.msgs, self.beat):
                extra = tuple(await self.gate.sitemap_urls(host_key(v.url)))
        if page.body is not None or page.raw is not None:  # not kept while the batch gathers
            page = replace(page, body=None, raw=None)
        return Done(v.key, v.msgs, page, attempt, extra=extra, extraction=ex)

    async def fetch(self, v: Visit, hold: _Hold) -> tuple[FetchedPage, int] | None:
        """Fetch in the host slot, and again while a failure may mend (each retry when its log
        line says): the page and the attempt that got it, or None when the visit went back to
        the frontier."""
        p, plan, slot = v.planned, v.plan, v.slot
        attempt = p.attempts + 1
        validators = Validators(p.etag, p.last_modified) if (
            p.etag or p.last_modified) and not plan.private else None
        req = FetchRequest(p.url_id, p.url, validators, plan.source.request_headers(p.url),
                           plan.wants_body or plan.source.wants_body, plan.keep_raw, plan.policy,
                           plan.fetch_options)
        while True:
            if plan.sessions is None:
                answer = await self._request(v, req, slot, attempt)
            else:
                answer = await self._with_session(v, plan.sessions, req, slot, attempt)
            if answer is None:
                return None
            page, decision = answer
            if plan.private:  # no other job is answered from it, nor revalidates it
                page = replace(page, cacheable=False, etag=None, last_modified=None)
            if decision.defer is not None:  # a rate limit: again once it resets, no attempt
                log.info("fetch %s deferred %.0fs (%s), attempt %d not counted",
                         p.url, decision.defer, page.error or page.status, attempt)
                await self.put_back(v.key, v.msgs, datetime.now().astimezone()
                                  + timedelta(seconds=decision.defer))
                return None
            if not decision.retry:
                return page, attempt
            log.info("fetch %s failed (%s), attempt %d; retrying in %.2fs",
                     p.url, page.error or page.status, attempt, decision.delay)
            again = await self._wait_to_retry(v, decision.delay, hold)
            if again is None:
                return None
            slot, attempt = again, attempt + 1

    async def extract(self, v: Visit, page: FetchedPage,
                      attempt: int) -> tuple[FetchedPage, Extraction] | Done | None:
        """Run the job's extractors on the page: the links of the first (the source's link
        extractor), the yields of all. A page the link extractor cannot read fails for good.
        One the job's rule set cannot read fails this visit only (a Done): the page is
        recorded as fetched with its links, for other jobs, but not as extracted under the
        rule set. None when an extractor cannot work now (the visit went back to the
        frontier)."""
        plan = v.plan
        base = page.final_url or v.url
        links: tuple[tuple[str, str], ...] = ()
        yields: tuple[Yield, ...] = ()
        try:
            async with bus.KeepAlive(v.msgs, self.beat):
                for i, extractor in enumerate(plan.extractors):
                    if not extractor.accepts(page):
                        continue
                    try:
                        got = await extractor.extract(page, base)
                    except ExtractFailed as e:
                        if i:
                            return Done(v.key, v.msgs, replace(page, body=None, raw=None),
                                        attempt, failure=f"extract[{i}] {extractor.name}: {e}",
                                        extraction=Extraction(links))
                        failed = replace(page, body=None, error=f"{extractor.name} not "
                                         f"extracted: {e}", permanent=True)
                        return failed, Extraction(ruleset=plan.ruleset)
                    if i == 0:  # the source's link extractor: the links to follow
                        links = got.links if plan.rewrite is None else plan.rewrite(got.links)
                    yields += got.yields
        except ExtractLater as e:  # not the page's fault: fetched again later, attempt not counted
            log.warning("%s of %s not extracted now (%s); back in the frontier",
                        extractor.name, v.url, e)
            await self.put_back(v.key, v.msgs, datetime.now().astimezone() + NO_LANE_DELAY)
            return None
        return page, Extraction(links, yields, plan.ruleset)

    async def write_outputs(self, v: Visit, ctx: Context, page: FetchedPage,
                            ex: Extraction) -> Extraction | Done:
        """Write the page to each of the job's outputs, before the commit: the extraction with
        their yields, or the visit failed (an output that cannot write fails its visit only).
        An error that may mend (``OutputError``: an ``OSError`` such as a full disk or a lost
        NFS mount, a lost PostgreSQL connection) raises ``RetryLater`` with the policy's
        backoff instead: the visit is tried again later, as a task's would be."""
        added: list[Yield] = []
        async with bus.KeepAlive(v.msgs, self.beat):
            for out in v.plan.outputs:
                try:
                    added += await out.write(ctx, page, ex)
                except Exception as e:
                    if isinstance(e, MAY_MEND) and not isinstance(e, NOT_MENDING):
                        log.warning("output %s of %s failed: %s; attempt %d", out.name, v.url,
                                    describe(e), ctx.attempt)
                        raise RetryLater(v.plan.policy.backoff(ctx.attempt),
                                         f"output {out.name} failed: {describe(e)}") from e
                    # a bug, or a name the job's pattern makes that cannot be: fails now
                    log.warning("output %s of %s failed: %s", out.name, v.url, describe(e),
                                exc_info=True)
                    return Done(v.key, v.msgs, attempts=ctx.attempt,
                                failure=f"output {out.name} failed: {describe(e)}")
        return replace(ex, yields=ex.yields + tuple(added)) if added else ex

    async def _retry_later(self, v: Visit, attempt: int, e: RetryLater,
                           who: str = "task") -> Done | None:
        """A task (or an output, failing in a way that may mend) asked for another try in
        ``e.delay`` seconds: the attempt is counted and the visit goes back to the frontier
        until then; past the source's retries it fails."""
        if attempt > v.plan.policy.retries:
            return Done(v.key, v.msgs, attempts=attempt,
                        failure=f"{e.reason} (gave up after {attempt} attempts)")
        log.info("%s asked to retry %s in %.2fs (%s), attempt %d", who, v.url, e.delay,
                 e.reason, attempt)
        due = datetime.now().astimezone() + timedelta(seconds=e.delay)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.frontier.count_attempt(conn, v.key)
                await self.frontier.defer(conn, {v.key: due})
            verdict = Settle(Verdict.ACK)
        except (*RETRYABLE, asyncpg.PostgresError) as err:
            log.warning("cannot put %s back (%s); it will be redelivered", v.key, err)
            verdict = Settle(Verdict.RETRY, e.delay)
        await bus.settle_all([v.msgs], verdict)
        return None

    async def _with_session(self, v: Visit, rules: SessionRules, req: FetchRequest, slot: Slot,
                            attempt: int) -> tuple[FetchedPage, RetryDecision] | None:
        """``_request`` with one session of the job's pool (none for the host: without one).
        None: no session was free (the visit went back to the frontier until one may be, its
        slot given back), or the host was paused. A block signal benches the session and asks
        for another try (counted; the next attempt leases another session; past ``retries``
        the page fails with its status, marked blocked)."""
        try:
            lease = await self.sessions.take(rules, req.url)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot lease a session for %s (%s); it will be redelivered", req.url, e)
            self.gate.give_back(slot)
            await bus.settle_all([v.msgs], Settle(Verdict.RETRY, 1.0))
            return None
        if isinstance(lease, datetime):
            log.info("no session of pool %s free for %s; back in the frontier until %s",
                     rules.pool, req.url, lease.isoformat(timespec="milliseconds"))
            self.gate.give_back(slot)
            await self.put_back(v.key, v.msgs, lease)
            return None
        if lease is None:
            return await self._request(v, req, slot, attempt)
        sent = replace(req, headers={**req.headers, **self.sessions.headers(lease)})
        try:
            answer = await self._request(v, sent, slot, attempt)
        except BaseException:
            self.sessions.give_back(lease)
            raise
        if answer is None:  # the host was paused: no request was made with it
            self.sessions.give_back(lease, used=False)
            return None
        page, decision = answer
        page = self.sessions.redact(page, lease)
        why = self.sessions.blocked(page, rules)
        if why is None:
            self.sessions.give_back(lease)
            return page, decision
        self.sessions.give_back(lease, bench=rules.bench, reason=why)
        log.info("session %s of pool %s blocked at %s (%s): benched", lease.name, rules.pool,
                 req.url, why)
        # Private (a job with sessions): the caller drops the page's cache validators.
        page = replace(page, error=f"blocked: {why} (session {lease.name})", body=None)
        return page, req.policy.blocked(decision, attempt)

    async def _request(self, v: Visit, req: FetchRequest, slot: Slot,
                       attempt: int) -> tuple[FetchedPage, RetryDecision] | None:
        """Wait for the slot's start, fetch, give the slot back: the page and the retry
        policy's decision on it. None: the host was paused meanwhile, and the visit went back
        to the frontier until the pause ends."""
        try:
            async with bus.KeepAlive(v.msgs, self.beat):
                paused = await self.gate.wait_start(slot)
                if paused is None:
                    page = await self._fetch(v.plan.fetcher, req, attempt == v.planned.attempts + 1)
        except BaseException:  # shutting down (or a bug): free the slot for others now
            self.gate.release(slot, trouble=False, retry_after=None)
            raise
        if paused is not None:  # the host was paused while this visit waited (a Retry-After)
            self.gate.give_back(slot)
            await self.put_back(v.key, v.msgs, paused)
            return None
        # Back the page's host off only for its own answer: after a redirect elsewhere, the
        # other host's trouble was already reported with that hop's slot.
        own = host_key(page.final_url or req.url) == host_key(req.url)
        decision = req.policy.decide(page, attempt)
        self.gate.release(slot, own and decision.trouble, decision.pause if own else None)
        return page, decision

    async def _fetch(self, fetcher: Fetcher, req: FetchRequest, first: bool) -> FetchedPage:
        """The fetcher's answer, marked with its kind. A fetcher that raises (only http
        promises never to) got no answer: its policy decides, as for a timeout. Its traceback
        is logged at the visit's ``first`` attempt only (the retries' log lines say the rest)."""
        start = time.monotonic()
        try:
            page = await fetcher.fetch(req, self.gate)
        except Exception as e:
            if first:
                log.exception("fetcher %s raised fetching %s", fetcher.kind, req.url)
            page = FetchedPage(req.url_id, None, None, f"fetcher error: {describe(e)}",
                               cacheable=False)
        took = time.monotonic() - start
        metrics.FETCH_SECONDS.labels(fetcher.kind).observe(took)
        if page.sent:  # else no request was made (no API token free): not a fetch
            if self.health is not None:  # no answer, and not the page's own fault (a 404)
                self.health.record(fetcher.kind, page.status is None and not page.permanent,
                                   took)
            self.stats.record(fetcher.kind, page.status is None or page.status >= 500, took)
        if page.body is not None:  # retries' bytes count too: they were fetched
            metrics.FETCH_BYTES.labels(fetcher.kind).inc(len(page.body))
        if fetcher.kind != "http":
            page = replace(page, fetcher=fetcher.kind)
        return page

    async def _wait_to_retry(self, v: Visit, delay: float, hold: _Hold) -> Slot | None:
        """Count the failed attempt, wait ``delay`` (giving the worker's concurrency slot to
        others meanwhile), then take the host's next request slot: the retry does not queue
        again behind the host's other visits, so it is made when logged, give or take the time
        to the host's next free start. None: the visit went back to the frontier instead (no
        slot in time, robots.txt now refuses, PostgreSQL away), its message settled."""
        key, url, msgs = v.key, v.url, v.msgs
        try:
            async with self.pool.acquire() as conn:
                await self.frontier.count_attempt(conn, key)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot count a failed attempt of %s (%s); it will be redelivered",
                        key, e)
            await bus.settle_all([msgs], Settle(Verdict.RETRY, delay))
            return None
        async with bus.KeepAlive(msgs, self.beat):
            hold.release()
            await asyncio.sleep(delay)
            await hold.acquire()
            host = host_key(url)
            self.retrying[host] += 1
            try:
                admitted = await self._retry_slot(url, v.plan.source.obeys_robots)
            finally:
                self.retrying -= Counter({host: 1})
        if isinstance(admitted, Slot):
            return admitted
        log.info("retry of %s not made now (%s); back in the frontier", url, admitted)
        await self.put_back(key, msgs, datetime.now().astimezone())
        return None

    async def put_back(self, key: Key, msgs: list[Msg], due: datetime) -> None:
        """Back to the frontier until ``due``, the attempt not counted; the message is done with."""
        try:
            async with self.pool.acquire() as conn:
                await self.frontier.defer(conn, {key: due})
            verdict = Settle(Verdict.ACK)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot put %s back (%s); it will be redelivered", key, e)
            verdict = Settle(Verdict.RETRY, 1.0)
        await bus.settle_all([msgs], verdict)

    async def _retry_slot(self, url: str, robots: bool = True) -> Slot | str | None:
        """A request slot for a retry, ahead of the host's visits not yet granted one: it may
        book past the starts granted so far (they book at most ``politeness_horizon`` ahead),
        and while the host is at its request cap it is asked for every 50 ms, not at the next
        visit's turn. Why not, when there is none within that time (a host paused longer, a
        Crawl-delay, robots.txt now refusing)."""
        ahead = 2 * self.settings.politeness_horizon + self.settings.host_limit(
            host_key(url)).delay
        return await self.gate.admit_hop(url, True, asyncio.get_running_loop().time() + ahead,
                                         horizon=ahead, robots=robots)


_NOTHING = Extraction()
_NO_OPTIONS: Mapping[str, Any] = {}


def any_2xx(status: int, mime: str | None) -> bool:
    """Read the body of every 2xx answer (a job whose rules or outputs read more than HTML)."""
    return 200 <= status < 300


def _not_json(yields: tuple[Yield, ...]) -> str | None:
    """Why the first of ``yields`` whose value JSON cannot encode cannot be stored; None:
    they all can."""
    for i, y in enumerate(yields):
        try:
            json.dumps(y.value)
        except (TypeError, ValueError) as e:
            return f"yield {i} ({y.kind}) is not JSON: {describe(e)}"
    return None


class _Hold:
    """A visit's hold on one of the worker's concurrency slots: given back while it waits
    without a request to make, taken again after, released once at the end."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots, self.held = slots, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    async def acquire(self) -> None:
        await self.slots.acquire()
        self.held = True
