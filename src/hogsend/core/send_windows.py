"""Send windows and recipient time zones: when a message may go out, in whose clock. No I/O.

A :class:`SendWindow` is the value the mailer's ``deferred`` gate reads (allowed
weekdays plus a local time range). Journey authors build one fluently through
``ctx.when()``, which returns a :class:`SendWindowBuilder` already set to the
recipient's zone (see :func:`resolve_timezone`)::

    window = ctx.when().weekdays().between("09:00", "17:00")
    await ctx.send_email(template="nudge", send_window=window)

Wall-clock times become instants with the "compatible" rule: a time skipped by a
spring-forward gap means the instant just after the gap (02:30 on a night that jumps
from 02:00 to 03:00 is 03:30 summer time), and a time that happens twice at fall-back
means its first occurrence. ``zoneinfo`` with ``fold=0`` does exactly this once the
local value goes through UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from hogsend.core.contact import Contact

WEEKDAY_NAMES: tuple[str, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
"""Index 0 is Monday, as in :meth:`datetime.date.weekday`."""

WORKING_DAYS: frozenset[int] = frozenset(range(5))
WEEKEND_DAYS: frozenset[int] = frozenset({5, 6})
ALL_DAYS: frozenset[int] = frozenset(range(7))

_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})$")

TimezoneSource = Literal[
    "explicit", "$timezone", "$geoip_time_zone", "contact", "property", "app_default", "utc"
]


def parse_time_of_day(text: str | time) -> time:
    """``"H:mm"`` or ``"HH:mm"`` (surrounding blanks ignored) as a :class:`datetime.time`.

    Raises:
        ValueError: anything else, including ``"24:00"``, ``"12:60"`` and ``"8h"``.
    """
    if isinstance(text, time):
        return text.replace(second=0, microsecond=0, tzinfo=None)
    found = _TIME_OF_DAY.match(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"time of day {text!r} is not H:mm or HH:mm")
    hour, minute = int(found.group(1)), int(found.group(2))
    if hour > 23 or minute > 59:
        raise ValueError(f"time of day {text!r} is out of range (00:00 .. 23:59)")
    return time(hour, minute)


def weekday_index(name: str) -> int:
    """``mon``..``sun`` or ``monday``..``sunday`` (any case) as 0 (Monday) .. 6 (Sunday).

    Raises:
        ValueError: an unknown name.
    """
    key = name.strip().lower() if isinstance(name, str) else ""
    for index, full in enumerate(WEEKDAY_NAMES):
        if key in (full, full[:3]):
            return index
    raise ValueError(f"unknown weekday {name!r} (use mon..sun or monday..sunday)")


def _day(day: str | int) -> int:
    if isinstance(day, bool) or not isinstance(day, int | str):
        raise ValueError(f"unknown weekday {day!r}")
    if isinstance(day, int):
        if day not in ALL_DAYS:
            raise ValueError(f"weekday {day} is outside 0 (Monday) .. 6 (Sunday)")
        return day
    return weekday_index(day)


def is_valid_timezone(name: object) -> bool:
    """Whether ``name`` is a known IANA zone; never raises."""
    if not isinstance(name, str) or not name.strip():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zone_or_utc(name: str | None) -> ZoneInfo:
    """The zone ``name``, or UTC when it is missing or unknown."""
    return ZoneInfo(name) if name is not None and is_valid_timezone(name) else ZoneInfo("UTC")


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall time ``at`` on ``day`` in ``zone`` (compatible rule)."""
    # fold=0 picks the first of two repeated times and, for a skipped time, the offset
    # before the jump: converted to UTC that lands just after the gap.
    return datetime.combine(day, at.replace(fold=0), zone).astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWindow:
    """When a send may go out: allowed weekdays and a local time range.

    Attributes:
        start: local opening time.
        end: local closing time (exclusive). ``start == end`` opens the whole day;
            ``start > end`` is an overnight window (22:00-06:00) that belongs to the
            weekday it opens on.
        weekdays: allowed days, 0 = Monday ... 6 = Sunday.
        timezone: IANA zone of ``start``/``end``; None means the contact's zone (UTC
            when the contact has none or an unknown one).
    """

    start: time
    end: time
    weekdays: frozenset[int] = ALL_DAYS
    timezone: str | None = None

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= ALL_DAYS:
            raise ValueError("weekdays must be a non-empty subset of 0 (Monday) .. 6 (Sunday)")

    def next_open(self, now: datetime, *, contact_timezone: str | None = None) -> datetime | None:
        """None when ``now`` is inside the window, else the instant it next opens (UTC)."""
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        zone = zone_or_utc(self.timezone or contact_timezone)
        local_day = now.astimezone(zone).date()
        best: datetime | None = None
        # Yesterday's overnight window may still be open; a week ahead always has a day.
        for offset in range(-1, 9):
            day = local_day + timedelta(days=offset)
            if day.weekday() not in self.weekdays:
                continue
            opens = local_instant(day, self.start, zone)
            close_day = day if self.end > self.start else day + timedelta(days=1)
            closes = local_instant(close_day, self.end, zone)
            if closes <= opens:
                continue  # a DST jump swallowed this day's window (02:30-03:00 on the jump)
            if opens <= now < closes:
                return None
            if opens > now and (best is None or opens < best):
                best = opens
        assert best is not None  # some allowed weekday lies within the next 8 days
        return best

    def send_at(self, now: datetime, *, contact_timezone: str | None = None) -> datetime:
        """``now`` when the window is open, else the instant it next opens (UTC)."""
        opens = self.next_open(now, contact_timezone=contact_timezone)
        return now if opens is None else opens


@dataclass(frozen=True, slots=True)
class SendWindowBuilder:
    """An immutable, fluent description of a send window; each call returns a new one.

    ``ctx.when()`` returns one set to the recipient's time zone. Without refinements
    it is open all the time. Days and hours combine::

        when().weekdays().between("09:00", "17:00")       # office hours, Mon-Fri
        when().on("sat", "sun").between("10:00", "12:00")  # weekend mornings
        when().between("22:00", "06:00")                  # overnight, every day
    """

    start: time = time(0)
    end: time = time(0)
    days: frozenset[int] = ALL_DAYS
    timezone: str | None = None

    def between(self, start: str | time, end: str | time) -> SendWindowBuilder:
        """Open from ``start`` (inclusive) to ``end`` (exclusive), local time.

        Raises:
            ValueError: a time that is not ``H:mm``/``HH:mm`` in 00:00..23:59.
        """
        return replace(self, start=parse_time_of_day(start), end=parse_time_of_day(end))

    def on(self, *days: str | int) -> SendWindowBuilder:
        """Open only on these weekdays: names (``"mon"`` .. ``"sun"``, full names) or
        numbers (0 = Monday ... 6 = Sunday).

        Raises:
            ValueError: no day, an unknown name or a number outside 0..6.
        """
        if not days:
            raise ValueError("on() needs at least one weekday")
        return replace(self, days=frozenset(_day(day) for day in days))

    def weekdays(self) -> SendWindowBuilder:
        """Open Monday to Friday."""
        return replace(self, days=WORKING_DAYS)

    def weekends(self) -> SendWindowBuilder:
        """Open Saturday and Sunday."""
        return replace(self, days=WEEKEND_DAYS)

    def in_timezone(self, timezone: str) -> SendWindowBuilder:
        """Read the hours in ``timezone`` instead of the recipient's.

        Raises:
            ValueError: ``timezone`` is not a known IANA zone (author error).
        """
        if not is_valid_timezone(timezone):
            raise ValueError(f"unknown time zone {timezone!r}")
        return replace(self, timezone=timezone)

    def window(self) -> SendWindow:
        """The :class:`SendWindow` the mailer reads."""
        return SendWindow(
            start=self.start, end=self.end, weekdays=self.days, timezone=self.timezone
        )

    def is_open(self, now: datetime, tz: str | None = None) -> bool:
        """Whether a send at ``now`` goes out at once (``tz``: zone if none is set)."""
        return self.window().next_open(now, contact_timezone=tz) is None

    def next_open(self, now: datetime, tz: str | None = None) -> datetime:
        """The first instant at or after ``now`` when the window is open (UTC).

        Unlike :meth:`SendWindow.next_open` this never returns None: it is ``now``
        itself when the window is open.
        """
        return self.window().send_at(now, contact_timezone=tz)


When = SendWindowBuilder
"""The name journey code reads it by: ``ctx.when()`` returns one."""


def when(timezone: str | None = None) -> SendWindowBuilder:
    """A window open all the time, read in ``timezone`` (None: the recipient's zone).

    Raises:
        ValueError: ``timezone`` is given and unknown.
    """
    builder = SendWindowBuilder()
    return builder if timezone is None else builder.in_timezone(timezone)


def as_send_window(value: SendWindow | SendWindowBuilder | None) -> SendWindow | None:
    """What ``send_email(send_window=...)`` accepts, as the mailer's :class:`SendWindow`."""
    if value is None or isinstance(value, SendWindow):
        return value
    return value.window()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedTimezone:
    """A recipient's time zone and where it came from.

    Attributes:
        name: the IANA zone.
        source: which candidate won (``utc`` is the final fallback).
        skipped: invalid candidates passed over, as ``"<source>=<value>"`` (log them).
    """

    name: str
    source: TimezoneSource
    skipped: tuple[str, ...] = ()


def resolve_timezone(
    *,
    contact_timezone: str | None = None,
    properties: Mapping[str, Any] | None = None,
    app_default: str | None = None,
    explicit: str | None = None,
) -> ResolvedTimezone:
    """The recipient's zone: the first **valid** candidate, in this order.

    1. ``explicit`` (a zone the caller insists on; an invalid one raises);
    2. the contact's ``$timezone`` property (set by PostHog-style sources);
    3. its ``$geoip_time_zone`` property;
    4. the contact's ``timezone`` field;
    5. its ``timezone`` property;
    6. ``app_default`` (the app's configured default);
    7. ``UTC``.

    Invalid data-sourced candidates are skipped, not fatal: contact data is not
    authored code.

    Raises:
        ValueError: ``explicit`` is given and unknown.
    """
    if explicit is not None:
        if not is_valid_timezone(explicit):
            raise ValueError(f"unknown time zone {explicit!r}")
        return ResolvedTimezone(name=explicit, source="explicit")
    bag = properties or {}
    candidates: tuple[tuple[TimezoneSource, object], ...] = (
        ("$timezone", bag.get("$timezone")),
        ("$geoip_time_zone", bag.get("$geoip_time_zone")),
        ("contact", contact_timezone),
        ("property", bag.get("timezone")),
        ("app_default", app_default),
    )
    skipped: list[str] = []
    for source, value in candidates:
        if value is None or value == "":
            continue
        if is_valid_timezone(value):
            assert isinstance(value, str)
            return ResolvedTimezone(name=value, source=source, skipped=tuple(skipped))
        skipped.append(f"{source}={value!r}")
    return ResolvedTimezone(name="UTC", source="utc", skipped=tuple(skipped))


def recipient_timezone(contact: Contact | None, *, app_default: str | None = None) -> str:
    """The zone a send window without its own is read in, for ``contact``.

    :func:`resolve_timezone` over the contact's properties and ``timezone`` field; UTC
    (or ``app_default``) without a contact.
    """
    if contact is None:
        return resolve_timezone(app_default=app_default).name
    return resolve_timezone(
        contact_timezone=contact.timezone, properties=contact.properties, app_default=app_default
    ).name
