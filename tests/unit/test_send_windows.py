"""Send windows, the when() builder and time zone resolution, with DST edges."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend.core.mailer_gates import SendWindow as GateSendWindow
from hogsend.core.send_windows import (
    SendWindow,
    SendWindowBuilder,
    as_send_window,
    is_valid_timezone,
    local_instant,
    parse_time_of_day,
    resolve_timezone,
    weekday_index,
    when,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("9:00", time(9)), ("09:05", time(9, 5)), (" 23:59 ", time(23, 59)), ("0:00", time(0))],
    )
    def test_times_of_day(self, text: str, expected: time) -> None:
        assert parse_time_of_day(text) == expected

    @pytest.mark.parametrize("text", ["24:00", "12:60", "8h", "", "9", "09:5", "123:00", "9:00:00"])
    def test_bad_times_are_author_errors(self, text: str) -> None:
        with pytest.raises(ValueError, match="time of day"):
            parse_time_of_day(text)

    @pytest.mark.parametrize(
        ("name", "index"), [("mon", 0), ("Monday", 0), ("WED", 2), ("sunday", 6), (" sat ", 5)]
    )
    def test_weekday_names(self, name: str, index: int) -> None:
        assert weekday_index(name) == index

    @pytest.mark.parametrize("name", ["", "mo", "funday", "tues"])
    def test_unknown_weekdays(self, name: str) -> None:
        with pytest.raises(ValueError, match="weekday"):
            weekday_index(name)

    def test_zone_validity_never_raises(self) -> None:
        assert is_valid_timezone("Europe/Berlin")
        for bad in ("", "   ", "Not/AZone", None, 42, "../etc/passwd"):
            assert not is_valid_timezone(bad)


class TestWallClockToInstant:
    def test_spring_forward_gap_takes_the_later_instant(self) -> None:
        # 02:30 does not exist in New York on 2026-03-08: it means 03:30 EDT.
        assert local_instant(datetime(2026, 3, 8).date(), time(2, 30), NEW_YORK) == utc(
            2026, 3, 8, 7, 30
        )
        # Berlin jumps 02:00 -> 03:00 on 2026-03-29: 02:30 means 03:30 CEST.
        assert local_instant(datetime(2026, 3, 29).date(), time(2, 30), BERLIN) == utc(
            2026, 3, 29, 1, 30
        )

    def test_fall_back_overlap_takes_the_earlier_instant(self) -> None:
        # 01:30 happens twice in New York on 2026-11-01: the first one is EDT (-04:00).
        assert local_instant(datetime(2026, 11, 1).date(), time(1, 30), NEW_YORK) == utc(
            2026, 11, 1, 5, 30
        )
        # 02:30 happens twice in Berlin on 2026-10-25: the first one is CEST (+02:00).
        assert local_instant(datetime(2026, 10, 25).date(), time(2, 30), BERLIN) == utc(
            2026, 10, 25, 0, 30
        )


class TestBuilder:
    def test_office_hours(self) -> None:
        builder = when().weekdays().between("09:00", "17:00")
        assert builder.window() == SendWindow(
            start=time(9), end=time(17), weekdays=frozenset(range(5))
        )

    def test_each_refinement_returns_a_new_value(self) -> None:
        base = when()
        office = base.weekdays()
        assert base.days == frozenset(range(7))
        assert office.days == frozenset(range(5))
        assert office.on("mon", "wed").days == frozenset({0, 2})
        assert office.on(4).days == frozenset({4})
        assert base.weekends().days == frozenset({5, 6})

    def test_open_all_the_time_by_default(self) -> None:
        assert when().is_open(utc(2026, 1, 4, 3, 0))

    def test_author_errors(self) -> None:
        with pytest.raises(ValueError, match="time zone"):
            when().in_timezone("Mars/Olympus")
        with pytest.raises(ValueError, match="time zone"):
            when("Mars/Olympus")
        with pytest.raises(ValueError, match="weekday"):
            when().on()
        with pytest.raises(ValueError, match="weekday"):
            when().on("noday")
        with pytest.raises(ValueError, match="weekday"):
            when().on(7)
        with pytest.raises(ValueError, match="time of day"):
            when().between("9am", "17:00")

    def test_next_open_is_now_inside_and_the_opening_outside(self) -> None:
        office = when("Europe/Berlin").weekdays().between("09:00", "17:00")
        tuesday_noon = utc(2026, 1, 6, 11, 0)
        assert office.next_open(tuesday_noon) == tuesday_noon
        # Friday 18:00 Berlin -> Monday 09:00 Berlin (CET, +01:00).
        assert office.next_open(utc(2026, 1, 9, 17, 0)) == utc(2026, 1, 12, 8, 0)

    def test_the_builder_zone_wins_over_the_recipient(self) -> None:
        office = when().between("09:00", "17:00")
        at = utc(2026, 1, 6, 12, 0)  # 21:00 in Tokyo
        assert not office.is_open(at, "Asia/Tokyo")
        assert office.next_open(at, "Asia/Tokyo") == utc(2026, 1, 7, 0, 0)
        assert office.in_timezone("UTC").is_open(at, "Asia/Tokyo")

    def test_weekend_over_dst_start_in_berlin(self) -> None:
        # Friday 2026-03-27 18:00 CET; the clocks jump on Sunday; Monday 09:00 is CEST.
        office = when("Europe/Berlin").weekdays().between("09:00", "17:00")
        assert office.next_open(utc(2026, 3, 27, 17, 0)) == utc(2026, 3, 30, 7, 0)

    def test_weekend_over_dst_end_in_new_york(self) -> None:
        # Friday 2026-10-30 17:30 EDT; the clocks fall back on Sunday; Monday 09:00 is EST.
        office = when("America/New_York").weekdays().between("09:00", "17:00")
        assert office.next_open(utc(2026, 10, 30, 21, 30)) == utc(2026, 11, 2, 14, 0)

    def test_a_window_inside_the_jump_moves_after_it(self) -> None:
        # 02:00-02:30 does not exist the night Berlin jumps: both ends shift by the gap,
        # so that night's window is 03:00-03:30 CEST.
        night = when("Europe/Berlin").between("02:00", "02:30")
        opens = night.next_open(utc(2026, 3, 28, 23, 0))  # Sunday 00:00 CET
        assert opens == utc(2026, 3, 29, 1, 0)
        assert night.is_open(utc(2026, 3, 29, 1, 29))
        assert not night.is_open(utc(2026, 3, 29, 1, 30))

    def test_a_window_the_jump_swallows_is_skipped(self) -> None:
        # 02:30-03:00 on the jump night starts after it ends (03:30 CEST > 03:00 CEST).
        swallowed = when("Europe/Berlin").between("02:30", "03:00")
        assert swallowed.next_open(utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 30, 0, 30)

    def test_overnight_window_across_fall_back(self) -> None:
        nightly = when("America/New_York").between("22:00", "06:00")
        # 2026-11-01 03:00 EST is inside Saturday night's window even with the extra hour.
        assert nightly.is_open(utc(2026, 11, 1, 8, 0))
        # 06:00 EST closes it; it opens again at 22:00 EST.
        assert nightly.next_open(utc(2026, 11, 1, 11, 0)) == utc(2026, 11, 2, 3, 0)

    def test_as_send_window(self) -> None:
        builder = when().weekdays().between("09:00", "17:00")
        assert as_send_window(builder) == builder.window()
        assert as_send_window(None) is None
        window = SendWindow(start=time(9), end=time(17))
        assert as_send_window(window) is window

    def test_the_mailer_gate_reads_the_same_class(self) -> None:
        assert GateSendWindow is SendWindow


ZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
)
INSTANTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
TIMES = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
DAYS = st.frozensets(st.integers(0, 6), min_size=1)


@settings(max_examples=300, deadline=None)
@given(zone=ZONES, now=INSTANTS, start=TIMES, end=TIMES, days=DAYS)
def test_next_open_is_open_and_not_early(
    zone: str, now: datetime, start: time, end: time, days: frozenset[int]
) -> None:
    builder = SendWindowBuilder(start=start, end=end, days=days, timezone=zone)
    opens = builder.next_open(now)
    assert opens >= now
    assert opens - now <= timedelta(days=8)
    assert builder.is_open(opens)
    if opens > now:
        # Closed just before it opens: the answer is the first opening, not a later one.
        assert not builder.is_open(opens - timedelta(seconds=1))


class TestResolveTimezone:
    def test_order_of_candidates(self) -> None:
        props = {"$timezone": "Asia/Tokyo", "$geoip_time_zone": "Europe/Paris", "timezone": "UTC"}
        assert (
            resolve_timezone(
                contact_timezone="America/Chicago", properties=props, app_default="Europe/Berlin"
            ).source
            == "$timezone"
        )
        del props["$timezone"]
        assert resolve_timezone(contact_timezone="America/Chicago", properties=props).name == (
            "Europe/Paris"
        )
        del props["$geoip_time_zone"]
        found = resolve_timezone(contact_timezone="America/Chicago", properties=props)
        assert (found.name, found.source) == ("America/Chicago", "contact")
        found = resolve_timezone(properties=props, app_default="Europe/Berlin")
        assert (found.name, found.source) == ("UTC", "property")
        found = resolve_timezone(app_default="Europe/Berlin")
        assert (found.name, found.source) == ("Europe/Berlin", "app_default")
        found = resolve_timezone()
        assert (found.name, found.source) == ("UTC", "utc")

    def test_invalid_data_is_skipped_not_fatal(self) -> None:
        found = resolve_timezone(
            contact_timezone="Nowhere/Land",
            properties={"$timezone": "", "timezone": 5},
            app_default="Europe/Berlin",
        )
        assert (found.name, found.source) == ("Europe/Berlin", "app_default")
        assert found.skipped == ("contact='Nowhere/Land'", "property=5")

    def test_explicit_zone_wins_and_must_be_valid(self) -> None:
        found = resolve_timezone(contact_timezone="Asia/Tokyo", explicit="America/New_York")
        assert (found.name, found.source) == ("America/New_York", "explicit")
        with pytest.raises(ValueError, match="time zone"):
            resolve_timezone(explicit="Nowhere/Land")


def test_recipient_timezone_reads_the_contact_as_the_mailer_does() -> None:
    from uuid import uuid4

    from hogsend.core.contact import Contact
    from hogsend.core.send_windows import recipient_timezone

    contact = Contact(id=uuid4(), key="k", timezone="America/New_York")
    assert recipient_timezone(contact) == "America/New_York"
    tagged = Contact(
        id=uuid4(), key="k", timezone="America/New_York", properties={"$timezone": "Asia/Tokyo"}
    )
    assert recipient_timezone(tagged) == "Asia/Tokyo"
    assert recipient_timezone(Contact(id=uuid4(), key="k", timezone="Bad/Zone")) == "UTC"
    assert recipient_timezone(None) == "UTC"
    assert recipient_timezone(None, app_default="Europe/Berlin") == "Europe/Berlin"
