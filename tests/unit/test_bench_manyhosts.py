"""The many-host benchmark's pure parts (bench/manyhosts.py): hosts, the site plan, the report's
arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import manyhosts as mh
from shared.urls import canonicalize


def test_host_addresses_are_distinct_loopback_and_skip_127_0_0() -> None:
    addrs = [mh.host_addr(k) for k in range(1000)]
    assert len(set(addrs)) == 1000
    assert addrs[0] == "127.0.1.1" and addrs[249] == "127.0.1.250" and addrs[250] == "127.0.2.1"
    assert all(a.startswith("127.0.") and not a.startswith("127.0.0.") for a in addrs)
    assert all(1 <= int(a.rsplit(".", 1)[1]) <= 250 for a in addrs)
    with pytest.raises(ValueError):
        mh.host_addr(-1)


def test_pages_per_host_splits_evenly() -> None:
    assert mh.pages_per_host(50_000, 1000) == [50] * 1000
    split = mh.pages_per_host(103, 10)
    assert sum(split) == 103 and max(split) - min(split) == 1 and split[:3] == [11, 11, 11]
    with pytest.raises(ValueError):
        mh.pages_per_host(5, 10)


def test_plan_covers_every_host_every_page_reachable() -> None:
    spec = mh.HostsSpec(pages=600, hosts=30, seed=3, port=18999)
    graph = mh.plan(spec)
    assert len(graph) == 600
    hosts = {u.split("/")[2] for u in graph}
    assert hosts == {f"{mh.host_addr(k)}:18999" for k in range(30)}
    # every link is a page of the site, in Harvester's canonical form
    assert all(t in graph and canonicalize(t) == t for links in graph.values() for t in links)
    levels = mh.levels_of(spec, graph)
    assert set(levels) == set(graph)
    assert levels[spec.url(0, 0)] == 0
    # cross-host links: most pages link to another host
    other = sum(any(t.split("/")[2] != u.split("/")[2] for t in links)
                for u, links in graph.items())
    assert other == 600
    assert mh.plan(spec) == graph  # deterministic


def test_small_job_pages_are_on_the_first_hosts_and_not_in_the_site() -> None:
    spec = mh.HostsSpec(pages=600, hosts=30, seed=3, port=18999, small_pages=100, small_hosts=10)
    small = spec.small_urls()
    assert len(set(small)) == 100
    assert {u.split("/")[2] for u in small} == {f"{mh.host_addr(k)}:18999" for k in range(10)}
    assert not set(small) & set(mh.plan(spec))


def test_generate_writes_every_expected_page(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = mh.HostsSpec(pages=60, hosts=6, seed=1, port=18999, small_pages=4, small_hosts=2)
    site = mh.generate(spec, tmp_path / "s")
    assert site.expected == sorted(mh.plan(spec))
    for url in site.expected + spec.small_urls():
        host, path = url.split("/")[2].split(":")[0], "/" + url.split("/", 3)[3]
        f = tmp_path / "s" / host / ("index.html" if path == "/" else path.lstrip("/"))
        assert f.is_file(), url
    # same-host links root-relative, other hosts absolute
    root = (tmp_path / "s" / mh.host_addr(0) / "index.html").read_text()
    assert 'href="/p1.html"' in root and f'href="http://{mh.host_addr(1)}:18999/"' in root
    assert site.harvester_depth == site.max_level + 1
    again = mh.generate(spec, tmp_path / "s")  # cached
    assert again.expected == site.expected and again.max_level == site.max_level


def test_report_arithmetic() -> None:
    assert mh.politeness_bound(100) == 200 and mh.politeness_bound(1000) == 2000
    assert mh.rate(50_000, 100.0) == 500 and mh.rate(10, None) is None
    assert mh.ratio(3.0, 2.0) == 1.5 and mh.ratio(1.0, 0) is None and mh.ratio(None, 2) is None
    assert mh.scrapy_concurrency(1000) == 2000 and mh.scrapy_concurrency(10) == 64
    runs = {"harvester": {"wall": 100.0, "valid": True},
            "single": {"wall": 95.0, "valid": True},
            "scrapy": {"wall": 400.0, "valid": True}}
    v = {what: (round(x, 3), met) for what, x, _, met in mh.verdicts(1000, 50_000, runs)}  # type: ignore[arg-type]
    assert v == {"against the single-host rate": (0.95, True), "against Scrapy (x)": (4.0, True)}
    runs = {"harvester": {"wall": 300.0, "valid": True}, "scrapy": {"wall": 250.0, "valid": False}}
    v = {what: (x, met) for what, x, _, met in mh.verdicts(100, 50_000, runs)}
    assert v["against the politeness bound"] == (pytest.approx(50_000 / 300 / 200), False)
    assert v["against Scrapy (x)"] == (None, None)  # an invalid run measures nothing


def test_bloom_saving() -> None:
    plain = {"cpu": 200.0, "cpu_by_kind": {"postgres": 50.0}}
    bloom = {"cpu": 150.0, "cpu_by_kind": {"postgres": 40.0}}
    s = mh.bloom_saving(plain, bloom, 50_000)
    assert s["cpu_ms_per_page"] == (4.0, 3.0)
    assert s["cpu_ms_per_page_saved"] == pytest.approx(0.25)
    assert s["postgres_cpu_s_saved"] == pytest.approx(0.2)
    assert mh.bloom_saving({}, bloom, 10)["cpu_ms_per_page_saved"] is None


def test_check_feed_counts_the_expected_pages_a_crawlers_feed_found(tmp_path: Path) -> None:
    from bench.others import _check_feed

    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps({"url": u, "links": ["x", "y"]}) + "\n"
                            for u in ("http://A.example:80/", "http://c.example/")))
    expected = ["http://a.example/", "http://b.example/"]
    assert _check_feed({"system": "s"}, feed, expected) == {
        "system": "s", "found": 1, "links": 4, "missing_sample": ["http://b.example/"],
        "valid": False, "error": "1 expected pages missing from the feed"}
    assert _check_feed({}, feed, expected[:1], links=False) == {
        "found": 1, "missing_sample": [], "valid": True}  # manyhosts' scrapy: no links
    assert _check_feed({}, tmp_path / "none.jsonl", expected, links=False)["found"] == 0


def test_the_many_host_port_is_free_on_every_address() -> None:
    from bench.server import free_port_pair, port_free

    port = free_port_pair(18580, hosts=("",))
    assert port >= 18580 and port_free(port, ("",))


def test_the_single_host_reference_crawls_the_same_graph_on_one_host() -> None:
    many = mh.HostsSpec(pages=600, hosts=30, seed=3, port=18999)
    one = mh.HostsSpec(pages=600, hosts=30, seed=3, port=18999, single=True)
    g_many, g_one = mh.plan(many), mh.plan(one)
    assert {u.split("/")[2] for u in g_one} == {f"{mh.host_addr(0)}:18999"}
    assert len(g_one) == len(g_many) == 600
    assert sum(map(len, g_one.values())) == sum(map(len, g_many.values()))
    assert (mh.level_histogram(mh.levels_of(one, g_one))
            == mh.level_histogram(mh.levels_of(many, g_many)))
    # host k page j -> /h<k>/<path>: the very same graph, page for page, link for link
    to_one = {many.url(k, j): one.url(k, j) for k, n in enumerate(mh.pages_per_host(600, 30))
              for j in range(n)}
    assert one.url(4, 0) == f"http://{mh.host_addr(0)}:18999/h4/"
    assert one.url(4, 7) == f"http://{mh.host_addr(0)}:18999/h4/p7.html"
    assert g_one == {to_one[u]: [to_one[t] for t in links] for u, links in g_many.items()}
    assert all(canonicalize(t) == t for links in g_one.values() for t in links)
    assert one.key() != many.key()  # cached apart


def test_generate_writes_the_single_host_reference_under_one_address(tmp_path: Path) -> None:
    spec = mh.HostsSpec(pages=60, hosts=6, seed=1, port=18999, small_pages=1, small_hosts=1,
                        single=True)
    site = mh.generate(spec, tmp_path / "s")
    assert [p.name for p in (tmp_path / "s").iterdir() if p.is_dir()] == [mh.host_addr(0)]
    assert (tmp_path / "s" / mh.host_addr(0) / "h0" / "index.html").is_file()
    assert (tmp_path / "s" / mh.host_addr(0) / "h5" / "p1.html").is_file()
    assert site.start_url == f"http://{mh.host_addr(0)}:18999/h0/"
    # "/" answers the server's readiness check and is not a page of the crawl
    assert (tmp_path / "s" / mh.host_addr(0) / "index.html").is_file()
    assert f"http://{mh.host_addr(0)}:18999/" not in site.expected
    many = mh.generate(mh.HostsSpec(pages=60, hosts=6, seed=1, port=18999), tmp_path / "m")
    for k in ("pages", "links", "max_level", "pages_per_level"):
        assert site.meta[k] == many.meta[k], k
    root = (tmp_path / "s" / mh.host_addr(0) / "h0" / "index.html").read_text()
    assert 'href="/h0/p1.html"' in root and 'href="/h1/"' in root  # all root-relative


def test_verdicts_at_100_hosts_judge_the_politeness_bound_only() -> None:
    runs = {"harvester": {"wall": 270.0, "valid": True}, "scrapy": {"wall": 300.0, "valid": True},
            "single": {"wall": 60.0, "valid": True}}
    v = {what: (target, met) for what, _, target, met in mh.verdicts(100, 50_000, runs)}
    # the hosts are the limit: Scrapy and the single-host rate are for information
    assert v == {"against the politeness bound": (0.9, True),
                 "against the single-host rate": (None, None),
                 "against Scrapy (x)": (None, None)}
    v = {what: target for what, _, target, _ in mh.verdicts(1000, 50_000, runs)}
    assert v == {"against the single-host rate": 0.9, "against Scrapy (x)": 3.0}


def test_metric_totals_sum_a_sample_over_processes_and_labels() -> None:
    foreman = ("# HELP harvester_visits_from_store_total Visits answered from the page store\n"
               "# TYPE harvester_visits_from_store_total counter\n"
               "harvester_visits_from_store_total 12.0\n"
               "harvester_visits_from_store_created 1.7e+09\n"
               'harvester_queue_messages{queue="work_queue"} 1750.0\n')
    worker = ('harvester_fetches_total{kind="http",status_class="2xx"} 100.0\n'
              'harvester_fetches_total{kind="http",status_class="error"} 2.0\n')
    worker2 = 'harvester_fetches_total{kind="http",status_class="2xx"} 50.0\n'
    t = mh.metric_totals([foreman, worker, worker2], ("harvester_visits_from_store_total",
                                                      "harvester_fetches_total",
                                                      "harvester_retries_total"))
    assert t == {"harvester_visits_from_store_total": 12, "harvester_fetches_total": 152,
                 "harvester_retries_total": None}  # absent: not measured, not 0


def test_statement_table_ranks_by_total_time_with_per_call_figures() -> None:
    stmts = [{"query": "SELECT harvester_acquire($1, $2)", "calls": 4000, "total_ms": 800.0,
              "rows": 4000, "plan_ms": 40.0},
             {"query": "WITH pr AS (SELECT * FROM unnest($1::int[])) SELECT a | b", "calls": 200,
              "total_ms": 2000.0, "rows": 35000}]
    lines = mh.statement_table(stmts, total_ms=4000.0)
    assert lines[0].startswith("| statement | calls | total ms | ms/call | plan ms/call | rows |")
    assert lines[2] == ("| `WITH pr AS (SELECT * FROM unnest($1::int[])) SELECT a / b` | 200 | "
                        "2,000 | 10.00 | — | 35,000 | 175.0 | 50.0 |")  # planning not tracked
    assert lines[3].startswith("| `SELECT harvester_acquire($1, $2)` | 4,000 | 800 | 0.20 | "
                               "0.01 | ")
    assert mh.statement_table([], total_ms=0.0) == []


def test_free_port_run_is_consecutive_and_free() -> None:
    from bench.server import port_free

    base = mh.free_port_run(4)
    assert all(port_free(p, ("127.0.0.1",)) for p in range(base, base + 4))
    # below the ephemeral range, where no connection's local end can take them meanwhile
    assert mh.PORT_RUN_FLOOR <= base and base + 4 <= mh.ephemeral_low()


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert mh.ephemeral_low(str(f)) == 40000
    assert mh.ephemeral_low(str(tmp_path / "absent")) == 32768


def test_crawl_lines_report_the_queues_at_submission_and_the_re_expansions() -> None:
    run = {"label": "harvester", "at_small": {
        "t": 17.8, "processed": 12_500,
        "streams": {"HARVESTER_URL_QUEUE": 150, "HARVESTER_WORK_QUEUE": 1_750},
        "pending_by_job": {"1": {"pending": 30_000, "published": 1_900}}},
        "counters": {"visits_from_store": 2_500.0, "fetches": 50_100.0,
                     "visits_forwarded": 53_100.0, "visits_deferred": 3_000.0,
                     "host_queue": 11_000.0}}
    lines = mh.crawl_lines(run, 50_000)
    assert lines == [
        ("* queues at 25% (harvester, 17.8 s, 12,500 processed): URL stream 150, work stream "
        "1,750; in PostgreSQL job 1: 30,000 pending, 1,900 published"),
        ("* re-expansions (harvester): 2,500 from-store visits (`harvester_visits_from_store`: "
        "5.0% of the pages); 50,100 fetches, 53,100 visits forwarded, 3,000 deferred at their "
        "host by a worker, 11,000 queued in one for its slot")]
    run["deferred_by_why"] = {"cap_idle": 2_000.0, "cap": 1_000.0}
    assert mh.crawl_lines(run, 50_000)[1].endswith(
        "11,000 queued in one for its slot (deferred: cap 1,000, cap_idle 2,000)")
    assert mh.metric_by_label([
        ('# HELP x\nharvester_visits_deferred_total{why="cap"} 3.0\n'
         'harvester_visits_deferred_total{why="delay"} 1.0\n'),
        'harvester_visits_deferred_total{why="cap"} 2.0\n'],
        "harvester_visits_deferred_total", "why") == {"cap": 5.0, "delay": 1.0}
    assert mh.crawl_lines({"label": "x", "counters": {"visits_from_store": None}}, 10) == [
        ("* re-expansions (x): — from-store visits (`harvester_visits_from_store`: — of the "
        "pages); — fetches, — visits forwarded, — deferred at their host by a worker, — queued "
        "in one for its slot")]
    assert mh.crawl_lines({"label": "scrapy"}, 10) == []
    assert mh.crawl_lines({"label": "h", "progress": [6.9, 12.5]}, 10) == [
        "* progress (h): seconds to each tenth of the pages processed 10% 6.9, 20% 12.5"]


def test_the_unpaced_run_splits_the_gap_into_the_hosts_and_the_politeness(
        tmp_path: Path) -> None:
    """``unpaced``: the many hosts with the single-host reference's limits (as many requests
    in flight as a worker has slots, no delay); its ratios are for information."""
    cfg = json.loads(mh.write_config(tmp_path / "c.json", 64, unpaced=True).read_text())
    assert (cfg["hostConcurrency"], cfg["hostDelay"]) == (64, "0s")
    polite = json.loads(mh.write_config(tmp_path / "p.json", 64).read_text())
    assert (polite["hostConcurrency"], polite["hostDelay"]) == (mh.HOST_CONCURRENCY,
                                                                mh.HOST_DELAY)
    runs = {"harvester": {"wall": 60.0, "valid": True}, "unpaced": {"wall": 48.0, "valid": True},
            "single": {"wall": 40.0, "valid": True}}
    v = {what: (round(x, 3), target) for what, x, target, _ in mh.verdicts(1000, 50_000, runs)}  # type: ignore[arg-type]
    assert v == {"against the single-host rate": (0.667, 0.9),
                 "against the unpaced rate (what the politeness costs)": (0.8, None),
                 "unpaced against the single-host rate (what the hosts cost)": (0.833, None)}


def test_repeats_are_judged_on_the_median_of_each_repeats_own_ratio() -> None:
    """``--repeat``: each repeat's runs are compared with each other (the same minutes of the
    machine), and a target is judged on the median of those ratios; an invalid run leaves its
    repeat out of the ratios that need it."""
    runs = [{"label": "harvester", "repeat": 1, "wall": 100.0, "valid": True},
            {"label": "single", "repeat": 1, "wall": 66.0, "valid": True},
            {"label": "harvester", "repeat": 2, "wall": 80.0, "valid": True},
            {"label": "single", "repeat": 2, "wall": 76.0, "valid": True},
            {"label": "harvester", "repeat": 3, "wall": 90.0, "valid": False},
            {"label": "single", "repeat": 3, "wall": 70.0, "valid": True},
            {"label": "harvester", "repeat": 4, "wall": 90.0, "valid": True},
            {"label": "single", "repeat": 4, "wall": 72.0, "valid": True}]
    assert [sorted(g) for g in mh.by_repeat(runs)] == [["harvester", "single"]] * 4
    [(what, median, target, met, values)] = mh.median_verdicts(1000, 50_000, runs)
    assert (what, target) == ("against the single-host rate", 0.9)
    assert values[2] is None and [round(v, 3) for v in values if v is not None] == [
        0.66, 0.95, 0.8]
    assert median == pytest.approx(0.8) and met is False  # not the pooled walls' 0.82
    runs[0]["wall"] = 70.0  # repeat 1 at x0.943: the median of 0.943, 0.95, 0.8
    assert mh.median_verdicts(1000, 50_000, runs)[0][1:4] == (pytest.approx(66 / 70), 0.9, True)
    # one run (no "repeat"): the one repeat's ratio, as before
    once = [{"label": "harvester", "wall": 100.0, "valid": True},
            {"label": "single", "wall": 95.0, "valid": True}]
    assert mh.median_verdicts(1000, 50_000, once)[0][1:] == (pytest.approx(0.95), 0.9, True,
                                                            [pytest.approx(0.95)])


def test_the_report_names_each_repeats_runs_and_gives_each_ratio(tmp_path: Path) -> None:
    import argparse
    import datetime

    spec = mh.HostsSpec(pages=60, hosts=6, seed=1, port=18999, small_pages=4, small_hosts=2)
    site = mh.generate(spec, tmp_path / "s")
    n = len(site.expected)
    runs = [{"label": "harvester", "repeat": r, "wall": w, "valid": True, "cpu": 1.0}
            for r, w in ((1, n / 50), (2, n / 80))]
    runs += [{"label": "single", "repeat": r, "wall": n / 100, "valid": True} for r in (1, 2)]
    a = argparse.Namespace(argv=["--hosts", "6", "--repeat", "2"], workers=2, concurrency=64)
    text = mh.render(a, site, runs, {}, datetime.datetime.now().astimezone())
    assert "| harvester r1 | yes |" in text and "| single r2 | yes |" in text
    assert "the median of 2 repeats" in text
    # 6 hosts: the politeness bound's shape (the single-host rate for information)
    assert "against the single-host rate: **0.65** (0.50, 0.80) (for information" in text
    assert runs[0]["label"] == "harvester"  # the caller's runs are left as they were


def test_table_writes_show_each_tables_rows_and_its_share_of_hot_updates() -> None:
    rows = [{"table": "url", "inserted": 62130, "updated": 19300, "hot": 6236, "deleted": 0,
             "autovacuums": 2, "autoanalyzes": 2},
            {"table": "job", "inserted": 1, "updated": 0, "hot": 0, "deleted": 0,
             "autovacuums": 0, "autoanalyzes": 0}]
    lines = mh.table_writes(rows)
    assert lines[2] == "| url | 62,130 | 19,300 | 6,236 (32%) | 0 | 2 | 2 |"
    assert lines[3] == "| job | 1 | 0 | 0 | 0 | 0 | 0 |"  # no update: no share
    assert mh.table_writes([]) == []


def test_worker_concurrency_sets_each_workers_slots_not_the_hosts_limits(
        tmp_path: Path) -> None:
    """``--worker-concurrency``: each worker's ``concurrency``; the single-host and unpaced
    hosts' limits stay at ``--concurrency`` (the cluster's)."""
    plain = json.loads(mh.write_config(tmp_path / "a.json", 64).read_text())
    assert plain["concurrency"] == 64
    cfg = json.loads(mh.write_config(tmp_path / "b.json", 64, unpaced=True,
                                     per_worker=32).read_text())
    assert (cfg["concurrency"], cfg["hostConcurrency"]) == (32, 64)
