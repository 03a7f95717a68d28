"""A poor man's PostgreSQL profiler: sample ``pg_stat_activity`` during a crawl.

Every ``interval`` seconds, the statements that client backends are running (``state =
'active'``), with what they wait on (no wait event: on CPU or in I/O the server does not report
as a wait). Counts per statement show where PostgreSQL's time goes.
"""

from __future__ import annotations

import re
import threading
from collections import Counter

_SPACE = re.compile(r"\s+")


class PgSampler(threading.Thread):
    def __init__(self, dsn: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.dsn, self.interval = dsn, interval
        self.samples = 0
        self.by_query: Counter[str] = Counter()
        self.by_wait: Counter[str] = Counter()
        self.by_query_wait: Counter[tuple[str, str]] = Counter()
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            import psycopg2
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
        except Exception as e:  # noqa: BLE001 - informative only
            self.error = str(e)
            return
        try:
            with conn.cursor() as cur:
                while not self._halt.wait(self.interval):
                    cur.execute("""
                        SELECT query, coalesce(wait_event_type || ':' || wait_event, 'CPU')
                        FROM pg_stat_activity
                        WHERE state = 'active' AND backend_type = 'client backend'
                          AND pid <> pg_backend_pid()""")
                    self.samples += 1
                    for query, wait in cur.fetchall():
                        q = _SPACE.sub(" ", query or "").strip()[:110]
                        self.by_query[q] += 1
                        self.by_wait[wait] += 1
                        self.by_query_wait[(q, wait)] += 1
        except Exception as e:  # noqa: BLE001
            self.error = str(e)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.statements = self._statements()

    def _statements(self, top: int = 14) -> list[tuple[str, int, float, float]]:
        """(statement, calls, total ms, rows) from pg_stat_statements, if the server loaded it."""
        try:
            import psycopg2
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cur.execute("""
                    SELECT query, calls, total_exec_time, rows FROM pg_stat_statements
                    WHERE query NOT ILIKE '%%pg_stat_%%' ORDER BY total_exec_time DESC LIMIT %s""",
                    (top,))
                rows = cur.fetchall()
            conn.close()
        except Exception:  # noqa: BLE001 - not loaded: no table
            return []
        return [(_SPACE.sub(" ", q).strip()[:110], c, t, r) for q, c, t, r in rows]

    def render(self, top: int = 12) -> str:
        if self.error:
            return f"(pg_stat_activity sampling failed: {self.error})"
        total = sum(self.by_query.values())
        if not total:
            return "(no active statements sampled)"
        out = [(f"{self.samples} samples every {self.interval * 1000:.0f} ms; on average "
                f"{total / max(1, self.samples):.1f} statements active. By statement "
                "(share of active-statement samples; the main wait events):"), "",
               "| statement | share % | waits |", "|---|---:|---|"]
        for q, n in self.by_query.most_common(top):
            waits = Counter({w: c for (qq, w), c in self.by_query_wait.items() if qq == q})
            wtxt = ", ".join(f"{w} {c * 100 / n:.0f}%" for w, c in waits.most_common(3))
            out.append(f"| `{q.replace('|', '/')}` | {n * 100 / total:.1f} | {wtxt} |")
        out += ["", "By wait event: " + ", ".join(
            f"{w} {c * 100 / total:.0f}%" for w, c in self.by_wait.most_common(6))]
        statements = getattr(self, "statements", [])
        if statements:
            spent = sum(t for _, _, t, _ in statements)
            out += ["", "pg_stat_statements (execution time of the top statements, whole run):",
                    "", "| statement | calls | total ms | ms / call | rows / call | share % |",
                    "|---|---:|---:|---:|---:|---:|"]
            out += [f"| `{q.replace('|', '/')}` | {c} | {t:.0f} | {t / c:.2f} | {r / c:.1f} | "
                    f"{t * 100 / spent:.1f} |" for q, c, t, r in statements]
        return "\n".join(out)
