"""What a claim costs PostgreSQL at many hosts (shared/db/frontier.py ``DueFrontier``, issue 14
part 2): on a real PostgreSQL, a claim over 1,000 capped (host, job) pairs, most hosts at their
cap, reads the published rows once (no per-host rescan: work linear in the pairs, not
quadratic), reads no pending row of a full host, and issues no statement for pairs that cannot
take more. The plan's figures (EXPLAIN ANALYZE) are printed (``-s``), never asserted."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shared.config import Settings
from shared.db import frontier as frontier_module
from shared.db.frontier import DueFrontier
from tests.integration.test_frontier_fair import claim, new_job

HOSTS = 1000


class Recorder:
    """The real connection, recording the statements a claim sends; the pair scan and the
    claim are also explained (ANALYZE, in a savepoint rolled back) before they run."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.sent: list[str] = []
        self.plans: list[dict[str, Any]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.sent.append(sql)
        if sql is frontier_module._CLAIM or sql is frontier_module._PAIRS:
            tr = self.conn.transaction()
            await tr.start()
            try:
                raw = await self.conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
                self.plans.append(json.loads(raw)[0])
            finally:
                await tr.rollback()
        return list(await self.conn.fetch(sql, *args))

    def transaction(self) -> Any:
        return self.conn.transaction()


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for sub in plan.get("Plans", []):
        out += nodes(sub)
    return out


def touched(plan: dict[str, Any]) -> float:
    """Rows every node produced or filtered out, over all its loops."""
    return sum((n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
                + n.get("Rows Removed by Join Filter", 0)) * n.get("Actual Loops", 0)
               for n in nodes(plan["Plan"]))


async def busy_hosts(db: asyncpg.Connection) -> tuple[DueFrontier, int, int]:
    """One job of 3 pages on each of 1,000 hosts capped at 2, every host filled (2 in flight),
    then one visit completed on each of 100 of them: (the frontier, published, hosts with
    room)."""
    frontier = DueFrontier(Settings())
    assert frontier.cap("http://h0.example") == 2
    await new_job(db, [f"http://h{i}.example/{j}" for i in range(HOSTS) for j in range(3)])
    while await claim(frontier, db, limit=1000):
        pass
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE published_on IS NOT NULL") \
        == 2 * HOSTS
    await db.execute("""
        DELETE FROM job_pending p USING (
            SELECT DISTINCT ON (host) job_id, url_id FROM job_pending
            WHERE published_on IS NOT NULL ORDER BY host, url_id LIMIT 100) d
        WHERE p.job_id = d.job_id AND p.url_id = d.url_id""")
    await db.execute("ANALYZE job_pending")
    return frontier, 2 * HOSTS - 100, 100


async def test_a_claim_over_1000_capped_hosts_reads_the_published_rows_once(
        db: asyncpg.Connection) -> None:
    frontier, published, room = await busy_hosts(db)
    rec = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(rec, 1000)  # type: ignore[arg-type]
    assert len(got) == room  # exactly the room the completions made
    pairs, plan = rec.plans
    print(f"\npairs: {pairs['Execution Time']:.1f} ms, {touched(pairs):.0f} rows touched; "
          f"claim over {HOSTS} capped pairs, {published} published, {room} with room: "
          f"{plan['Execution Time']:.1f} ms, {touched(plan):.0f} rows touched, "
          f"shared hits {plan['Plan'].get('Shared Hit Blocks')}")
    # linear: each published row and each pair a few times, not every pair for every host
    assert touched(plan) < 20 * (published + HOSTS), touched(plan)
    lateral = [n for n in nodes(plan["Plan"])
               if n.get("Index Name") == "job_pending_frontier"]
    assert lateral, "the per-pair scan of job_pending_frontier"
    # the pending rows of full hosts are never read: only the pairs with room are scanned
    assert all(n["Actual Loops"] <= room for n in lateral), lateral


async def test_no_refill_of_pairs_whose_host_cap_is_the_share(db: asyncpg.Connection) -> None:
    # 10 live hosts capped at 2 among 990 pairs with nothing due: each live pair takes its
    # share (2 = its cap), the claim falls short of its limit, but a refill could only find
    # the hosts at their cap again: no third statement.
    frontier = DueFrontier(Settings())
    later, _ = await new_job(db, [f"http://later{i}.example/" for i in range(990)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' WHERE job_id = $1",
                     later)
    live, _ = await new_job(db, [f"http://live{i}.example/{j}" for i in range(10)
                                 for j in range(5)])
    rec = Recorder(db)
    async with db.transaction():
        got = await frontier.claim(rec, 1000)  # type: ignore[arg-type]
    assert len(got) == 20 and {k[0] for k in got} == {live}
    assert rec.sent.count(frontier_module._CLAIM) == 1


async def test_a_refill_still_serves_hosts_whose_cap_exceeds_the_share(
        db: asyncpg.Connection) -> None:
    # cap 10 (2 + 4 s of starts at 0.5 s), share 2: the refill fills the live hosts' room
    frontier = DueFrontier(Settings(host_lookahead=4, politeness_horizon=5))
    later, _ = await new_job(db, [f"http://later{i}.example/" for i in range(990)])
    await db.execute("UPDATE job_pending SET due = now() + interval '1 hour' WHERE job_id = $1",
                     later)
    live, _ = await new_job(db, [f"http://live{i}.example/{j}" for i in range(10)
                                 for j in range(20)])
    async with db.transaction():
        got = await frontier.claim(db, 1000)
    assert len(got) == 10 * 10 and {k[0] for k in got} == {live}
