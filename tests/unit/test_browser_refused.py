"""A browser navigation the gate refused: the SSRF guard's refusal blocks the visit for good
(the http fetcher's redirect hops do the same), robots.txt is final, the rest is tried again."""

from __future__ import annotations

from shared.robots import BLOCKED_PREFIX, REFUSALS, is_refusal
from worker.fetchers import FetchRequest
from worker.fetchers.browser import _refused
from worker.retry import RetryPolicy

REQ = FetchRequest(7, "http://127.0.0.1:1/p", None, {}, lambda s, m: True, False,
                   RetryPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0))
HOP = "http://169.254.169.254/latest/meta-data/"


def test_a_guard_refusal_of_a_navigation_blocks_the_visit_for_good() -> None:
    page = _refused(REQ, HOP, f"{BLOCKED_PREFIX}cloud metadata address", 302, (REQ.url,))
    assert page.permanent and not page.cacheable and page.status is None
    assert page.error is not None and page.error.startswith(BLOCKED_PREFIX)
    assert is_refusal(page.error) and HOP in page.error
    assert page.final_url == HOP and page.redirects == (REQ.url,)


def test_robots_is_final_and_a_busy_host_is_tried_again() -> None:
    robots = next(iter(REFUSALS))
    final = _refused(REQ, HOP, robots, 302)
    assert final.permanent and final.status == 302
    later = _refused(REQ, HOP, "host busy", 302)
    assert not later.permanent and later.status is None
