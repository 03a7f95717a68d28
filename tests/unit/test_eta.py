"""web_server.eta: the expected remaining pages from the levels, and the ETA."""

from __future__ import annotations

from web_server.eta import EXTRAPOLATE, Level, eta_seconds, fanouts, horizon, remaining


def tree_levels(fanout: int, max_level: int, processed: list[int]) -> list[Level]:
    """A tree where every page links to ``fanout`` new pages, ``processed[l]`` pages of level
    l processed: the levels as the database would count them."""
    levels = []
    visited = 1
    for lvl in range(max_level + 1):
        done = processed[lvl] if lvl < len(processed) else 0
        levels.append(Level(lvl, visited, visited - done))
        visited = done * fanout if lvl < max_level else 0
    return [lv for lv in levels if lv.visited]


def test_known_fanout_tree_gives_the_exact_remaining() -> None:
    # Fan-out 2, depth 3: 1 + 2 + 4 + 8 = 15 pages. The root and one page of level 1 are
    # processed, so 13 remain (1 + 2 + 4 under the pending level-1 page, 2 * 3 under level 2).
    levels = tree_levels(2, 3, [1, 1])
    assert levels == [Level(0, 1, 0), Level(1, 2, 1), Level(2, 2, 2)]
    assert remaining(levels, 3) == 13
    # Deeper in: every page of levels 0-2 processed, 3 of level 3: 8 - 3 = 5 remain.
    assert remaining(tree_levels(2, 3, [1, 2, 4, 3]), 3) == 5
    # Fan-out 3, depth 4, root only processed: 3 pending pages of level 1, each 1+3+9+27 = 40.
    assert remaining(tree_levels(3, 4, [1]), 4) == 120


def test_unobserved_levels_use_the_last_observed_fanout() -> None:
    assert fanouts([Level(0, 1, 0), Level(1, 4, 4)], 3) == [4.0, 4.0, 4.0]
    assert fanouts([Level(0, 1, 1)], 2) == [0.0, 0.0]  # nothing processed: nothing known
    assert remaining([Level(0, 1, 1)], 2) == 1


def test_depth_zero_and_finished() -> None:
    assert remaining([Level(0, 5, 2)], 0) == 2
    assert remaining([Level(0, 1, 0), Level(1, 3, 0)], 1) == 0


def test_max_pages_caps_the_remaining() -> None:
    levels = tree_levels(2, 3, [1, 1])  # 5 visits so far, 3 pending, 13 expected
    assert remaining(levels, 3, max_pages=9) == 3 + 4
    assert remaining(levels, 3, max_pages=5) == 3  # the cap is reached: only the pending
    assert remaining(levels, 3, max_pages=100) == 13


def test_eta() -> None:
    assert eta_seconds(100, 4.0) == 25.0
    assert eta_seconds(100, 0.0) is None
    assert eta_seconds(0, 0.0) == 0.0


def test_an_unbounded_job_is_estimated_within_a_few_levels_of_what_it_has_seen() -> None:
    """An id crawl has max_level 2**31 - 2: the estimate stops EXTRAPOLATE levels past the
    deepest level seen (it used to loop over every level, and /status never answered)."""
    levels = [Level(0, 1, 0), Level(1, 3, 2)]
    assert horizon(levels, 2**31 - 2) == 1 + EXTRAPOLATE
    left = remaining(levels, 2**31 - 2)
    assert left == remaining(levels, 1 + EXTRAPOLATE)
    assert 2 <= left < float("inf")
