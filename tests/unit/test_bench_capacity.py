"""bench/capacity.py: the capacity model scales the measured per-page figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import capacity

RUN = {"system": "harvester", "valid": True, "variant": "plain", "cpu": 36.2,
       "cpu_by_kind": {"worker": 20.0, "postgres": 10.0, "foreman": 4.0, "nats-server": 2.0,
                       "web_server": 0.2},
       "footprint": {"pages": 10_000, "links": 250_000,
                     "tables": {"url": {"rows_per_page": 3.0, "bytes_per_page": 600}},
                     "db_bytes_per_page": 5000, "wal_bytes_per_page": 12_000,
                     "rows_written_per_page": 50.0, "commits_per_page": 0.3,
                     "messages_per_page": 2.0}}


def test_per_page_figures_come_from_the_run() -> None:
    p = capacity.PerPage.from_run(RUN)
    assert p.cpu_ms["worker"] == pytest.approx(2.0)      # 20 s over 10,000 pages
    assert p.cpu_ms["postgres"] == pytest.approx(1.0)
    assert p.links == 25.0 and p.url_bytes_per_row == pytest.approx(200.0)


def test_a_billion_pages_in_30_days() -> None:
    p = capacity.PerPage.from_run(RUN)
    n = capacity.need(p, "1B", 1e9, 30, latency=2.0, page_factor=3.0)
    assert n.rate == pytest.approx(1e9 / (30 * 86400))   # 385.8 pages/s
    assert n.cores["worker"] == pytest.approx(2.0 * n.rate / 1000 * 3.0)
    assert n.cores["postgres"] == pytest.approx(1.0 * n.rate / 1000)
    assert n.disk_gb == pytest.approx(5000.0)            # 5,000 bytes x 1e9
    assert n.url_table_gb == pytest.approx(600.0)        # 3 rows of 200 bytes per page
    assert n.in_flight == pytest.approx(2 * n.rate) and n.hosts == pytest.approx(n.rate / 2)
    assert n.messages_s == pytest.approx(2 * n.rate)


def test_the_command_prints_the_three_scenarios(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "last.json"
    report.write_text(json.dumps({"runs": [{"system": "scrapy"}, RUN]}))
    assert capacity.main([str(report)]) == 0
    out = capsys.readouterr().out
    assert "1 billion in 30 days" in out and "| pages/s | 12 | 39 | 386 |" in out
    with pytest.raises(SystemExit):
        capacity.harvester_run({"runs": [{"system": "scrapy"}]})


def test_the_run_of_median_cpu_per_page_is_the_one_used() -> None:
    runs = [{**RUN, "cpu": cpu, "label": label} for cpu, label in ((50.0, "slow"),
                                                                     (30.0, "fast"),
                                                                     (40.0, "middle"))]
    assert capacity.harvester_run({"runs": runs})["label"] == "middle"
