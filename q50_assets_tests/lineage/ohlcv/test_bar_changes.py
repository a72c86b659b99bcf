"""The sensor's change detection, alone: cursor round trip and the diff of two ticks."""

from q50_assets.lineage.ohlcv.bar_changes import BarsCursor, PoolState, diff, pool_states, window_digest


def _summary(newest, rows, window):
    return {"newest": newest, "rows": rows, "window": window}


def test_cursor_round_trip_and_reset_on_other_timeframe_or_version():
    cursor = BarsCursor("1h", {"run_count": 3, "updated_at": "2025-10-05T13:06:40+00:00"},
                        {"p1": PoolState(100, 5, "abc"), "p0": PoolState(90, 2, "def")})
    raw = cursor.to_json()
    assert BarsCursor.from_json(raw, "1h") == cursor
    assert BarsCursor.from_json(raw, "4h") == BarsCursor("4h")  # another timeframe starts afresh
    assert BarsCursor.from_json(None, "1h") == BarsCursor("1h")
    assert BarsCursor.from_json(raw.replace('"version":1', '"version":0'), "1h") == BarsCursor("1h")


def test_diff_sees_new_pools_new_bars_backfills_revisions_and_vanished_pools():
    window = [[3600, "1.0", "1.2", "0.9", "1.1", "10.00"]]
    before = pool_states({
        "same": _summary(3600, 10, window),
        "newer": _summary(3600, 10, window),
        "backfilled": _summary(3600, 10, window),
        "revised": _summary(3600, 10, window),
        "gone": _summary(3600, 10, window),
    })
    revised_window = [[3600, "1.0", "1.3", "0.9", "1.25", "12.00"]]
    after = pool_states({
        "same": _summary(3600, 10, window),
        "newer": _summary(7200, 11, window),
        "backfilled": _summary(3600, 11, window),   # an older gap filled: same newest bar, more rows
        "revised": _summary(3600, 10, revised_window),
        "fresh": _summary(3600, 1, window),
    })
    changes = diff(before, after)
    assert changes.new_pools == ["fresh"]
    assert changes.new_bars == ["backfilled", "newer"]
    assert changes.revised == ["revised"]
    assert changes.vanished == ["gone"]
    assert changes.to_refresh == ["backfilled", "fresh", "newer", "revised"]
    assert [changes.reason(p) for p in ("fresh", "newer", "revised")] == ["new_pool", "new_bars", "revised"]
    assert diff(after, after).to_refresh == []


def test_digest_depends_on_every_value_and_the_run_key_on_the_state():
    rows = [[3600, "1.0", "1.2", "0.9", "1.1", "10.00"], [7200, "1.1", "1.2", "1.0", "1.1", "0.00"]]
    digest = window_digest(rows)
    for i in range(2):
        for j in range(6):
            changed = [list(r) for r in rows]
            changed[i][j] = "999" if j else 1
            assert window_digest(changed) != digest, (i, j)
    assert PoolState(7200, 2, digest).run_key_part == f"7200-2-{digest}"


def test_state_from_all_rows_equals_the_sensors_state_from_its_window_query():
    from q50_assets.lineage.ohlcv.bar_changes import state_of_rows, window_rows

    rows = [(t * 3600, 1.0 + t, 1.5 + t, 0.5, 1.25 + t, None if t == 9 else 10.0 * t) for t in range(10)]
    state = state_of_rows(rows, window_bars=3, bar_seconds=3600)
    # What CollectorReader.bar_summaries gives for the same table: newest, count, the window's rows.
    window = [r for r in rows if r[0] > 9 * 3600 - 3 * 3600]
    assert state == pool_states({"p": {"newest": 9 * 3600, "rows": 10,
                                       "window": window_rows(window, 3, 3600)}})["p"]
    assert [r[0] for r in window_rows(rows, 3, 3600)] == [7 * 3600, 8 * 3600, 9 * 3600]
    assert window_rows(rows, 3, 3600)[-1][-1] == ""  # NULL volume
    assert state_of_rows([], 3, 3600) is None
