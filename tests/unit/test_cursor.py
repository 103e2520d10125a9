"""The cursor: a pure value that only moves forward."""

from __future__ import annotations

from datetime import timedelta

import pytest

from poller.cursor import MAX_STORED_INT, Cursor, CursorError
from poller.window import Window, buckets
from tests.unit.fakes import T0

H = timedelta(hours=1)
DAY = timedelta(days=1)


def test_begin_opens_the_next_window_from_the_look_back_up_to_now() -> None:
    cursor = Cursor(T0).begin(T0 + H, T0 - 5 * timedelta(minutes=1), 31 * DAY)
    assert cursor == Cursor(T0, Window(T0 - timedelta(minutes=5), T0 + H))
    assert cursor.begin(T0 + 2 * H, T0, 31 * DAY) is cursor, "a window in progress is resumed"


def test_begin_never_starts_after_the_cursor_and_cuts_at_the_longest_span() -> None:
    cursor = Cursor(T0).begin(T0 + 40 * DAY, T0 + H, 31 * DAY)
    assert cursor.window == Window(T0, T0 + 31 * DAY)


def test_a_cursor_that_reached_now_stays() -> None:
    cursor = Cursor(T0 + H)
    assert cursor.done_by(T0 + H)
    assert cursor.begin(T0 + H, T0, DAY) is cursor
    assert not cursor.done_by(T0 + 2 * H)


def test_pages_move_the_token_and_the_last_one_finishes_the_window() -> None:
    cursor = Cursor(T0 - H, Window(T0 - 2 * H, T0))
    after = cursor.after_page(17)
    assert after == Cursor(T0 - H, Window(T0 - 2 * H, T0), 17)
    assert after.after_page(0) == Cursor(T0)


def test_finishing_a_window_never_moves_the_cursor_back() -> None:
    cursor = Cursor(T0 + H, Window(T0 - 2 * H, T0))
    assert cursor.finish_window() == Cursor(T0 + H)
    assert Cursor(T0).finish_window() == Cursor(T0)


@pytest.mark.parametrize("token", [-1, MAX_STORED_INT + 1, 2**70])
def test_a_token_the_state_cannot_hold_is_refused(token: int) -> None:
    # The text is what a damaged state file is reported with (StateError quotes it).
    with pytest.raises(CursorError, match=f"^page token out of range: {token}$"):
        Cursor(T0, Window(T0 - H, T0), token)
    assert Cursor(T0, Window(T0 - H, T0), MAX_STORED_INT).next_id == MAX_STORED_INT


def test_no_page_outside_a_window_and_no_token_without_one() -> None:
    with pytest.raises(CursorError, match=r"^a page outside any window$"):
        Cursor(T0).after_page(3)
    with pytest.raises(CursorError, match=r"^a page token without a window$"):
        Cursor(T0, None, 3)


def test_buckets_cut_at_multiples_with_partial_ends() -> None:
    start = T0 + timedelta(minutes=20)
    pieces = buckets(Window(start, T0 + 2 * H + timedelta(minutes=5)), H)
    assert pieces == [
        Window(start, T0 + H),
        Window(T0 + H, T0 + 2 * H),
        Window(T0 + 2 * H, T0 + 2 * H + timedelta(minutes=5)),
    ]
