"""Pools into batch runs: contiguous partition ranges, bounded, never covering an unrequested pool."""

import pytest

from q50_assets.automation.runs import batch_run_requests, pool_batches, range_tags, request_pools

ORDER = [f"p{i}" for i in range(10)]


def test_every_pool_in_ranges_of_at_most_pools_per_run():
    assert pool_batches(ORDER, ORDER, 4) == [ORDER[0:4], ORDER[4:8], ORDER[8:10]]
    assert pool_batches(ORDER, ORDER, 100) == [ORDER]


def test_an_unrequested_pool_splits_a_range_and_order_is_the_partitions():
    assert pool_batches(ORDER, ["p7", "p1", "p2", "p9"], 100) == [["p1", "p2"], ["p7"], ["p9"]]
    assert pool_batches(ORDER, [], 3) == []


def test_unknown_pools_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="without a partition: \\['nope'\\]"):
        pool_batches(ORDER, ["p1", "nope"], 5)
    with pytest.raises(ValueError, match="pools_per_run must be >= 1"):
        pool_batches(ORDER, ORDER, 0)


def test_run_requests_carry_the_range_and_cover_exactly_their_pools():
    requests = batch_run_requests(ORDER, ["p2", "p3", "p4", "p6"], 2, [], {"q50/trigger": "new_bars"},
                                  run_key=lambda batch: "+".join(batch))
    assert [request_pools(r.tags, ORDER) for r in requests] == [["p2", "p3"], ["p4"], ["p6"]]
    assert [r.run_key for r in requests] == ["p2+p3", "p4", "p6"]
    assert all(r.tags["q50/trigger"] == "new_bars" for r in requests)
    assert requests[0].tags == {"q50/trigger": "new_bars", **range_tags(["p2", "p3"]), "q50/pools": "2"}
