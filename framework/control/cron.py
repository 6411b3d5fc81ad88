"""Cron expressions in a timezone: a small wrapper over croniter.

An expression has 5 fields (`minute hour day month weekday`) or 6, the 6th being seconds (croniter's form,
e.g. `* * * * * */10` fires every 10 s); croniter's `@hourly`-style aliases work too. Fire times are computed
in the schedule's IANA timezone, so daylight-saving changes do what croniter does: a wall-clock time that a
spring-forward skips fires at the first instant after the gap, and one that a fall-back repeats fires twice
(once per UTC offset).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

FIELDS = (5, 6)
"""Accepted field counts: croniter's 7-field form (with years) is not part of the contract."""
ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
"""croniter's shortcuts for 5-field expressions (`@reboot` has no meaning on a cluster of nodes)."""
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Names the timezone database holds that are no IANA zone: the host's own zone (so each node may differ),
a file of the database's build, and its placeholder."""
_RANDOM = re.compile(r"(?:^|[,/-])R(?:$|[,/(-])", re.IGNORECASE)
"""croniter's random field `R`: a different fire time at every parse, so per node and per restart."""


def zone(name: str) -> ZoneInfo:
    """The timezone `name`, e.g. `Europe/Berlin`; ValueError when the database has no such file. What a
    schedule runs in: a revision on the log keeps working under it (`check_zone` is the manifest's rule)."""
    if not name or not name.strip():
        raise ValueError("empty timezone: expected an IANA name such as 'UTC' or 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}: expected an IANA name such as 'Europe/Berlin'") from exc


def check_zone(name: str) -> ZoneInfo:
    """`zone`, for a name the manifest may use: an IANA zone of the database, not `localtime` (the host's
    own zone, so each node may differ), `posix/...`, `right/...`, `posixrules` or `Factory`."""
    found = zone(name)
    if name != "UTC" and (name not in _zones() or name in NOT_ZONES):
        raise ValueError(f"unknown timezone {name!r}: expected an IANA name such as 'Europe/Berlin'")
    return found


@functools.cache
def _zones() -> frozenset[str]:
    """The IANA names the timezone database holds (read once: about 30 ms)."""
    return frozenset(available_timezones())


def check_expression(cron: str, strict: bool = False) -> None:
    """Raise ValueError with a readable message unless `cron` is a valid 5- or 6-field expression.

    `strict` (the manifest's rule) also refuses croniter's random field `R`, which fires at other times on
    every node; a revision already on the log keeps working without it. An expression found valid is
    remembered (croniter takes about 0.2 ms to check one, and every function's schedules are checked
    again each time what a node serves is worked out: 60% of its time with 1,000 functions)."""
    if not isinstance(cron, str):
        raise ValueError("empty cron expression: expected 5 fields, or 6 with seconds as the 6th")
    _checked(cron, strict)


@functools.lru_cache(maxsize=4096)
def _checked(cron: str, strict: bool) -> None:
    """`check_expression` of a str; only what passes is cached (a raise is not)."""
    if not cron.strip():
        raise ValueError("empty cron expression: expected 5 fields, or 6 with seconds as the 6th")
    fields = cron.split()
    if cron.lstrip().startswith("@"):
        if cron.strip().lower() not in ALIASES:
            raise ValueError(f"bad cron {cron!r}: the shortcuts are {', '.join(ALIASES)}")
    elif len(fields) not in FIELDS:
        raise ValueError(
            f"bad cron {cron!r}: {len(fields)} fields, expected 5 "
            "(minute hour day month weekday), or 6 with seconds as the 6th"
        )
    if strict and any(_RANDOM.search(field) for field in fields):
        raise ValueError(f"bad cron {cron!r}: the random field R fires at other times on every node")
    try:
        croniter(cron)
    except (CroniterError, ValueError, KeyError) as exc:
        if "hash_id" in str(exc):  # croniter's wording names its own argument, which no manifest gives
            raise ValueError(
                f"bad cron {cron!r}: the hashed field H (Jenkins) is not supported: write the value"
            ) from exc
        raise ValueError(f"bad cron {cron!r}: {exc}") from exc
    try:  # valid fields can still name a date that never comes, e.g. `0 0 31 2 *`
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterError as exc:
        raise ValueError(f"bad cron {cron!r}: it never fires") from exc


@dataclass(frozen=True, slots=True)
class Cron:
    """A validated expression with its timezone. Build it with `parse`."""

    expression: str
    tz: ZoneInfo

    @property
    def timezone(self) -> str:
        return self.tz.key

    def _start(self, after: datetime | None) -> datetime:
        # Naive datetimes are taken as UTC; croniter computes in the schedule's own zone.
        if after is None:
            after = datetime.now(UTC)
        elif after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        return after.astimezone(self.tz)

    def ticks(self, after: datetime | None = None) -> Iterator[datetime]:
        """Fire times strictly after `after` (default: now), ascending, timezone-aware in `tz`; endless."""
        it = croniter(self.expression, self._start(after))
        while True:
            yield it.get_next(datetime)

    def next(self, after: datetime | None = None) -> datetime:
        """The first fire time strictly after `after` (default: now), aware, in `tz`."""
        return next(self.ticks(after))


def parse(cron: str, timezone: str = "UTC") -> Cron:
    """Validate `cron` and `timezone` (IANA name, default UTC); ValueError with a clear message if bad."""
    check_expression(cron)
    return Cron(cron.strip(), zone(timezone))


def next_fire(cron: str, timezone: str = "UTC", after: datetime | None = None) -> datetime:
    """Next fire time of `cron` in `timezone` strictly after `after` (default: now; naive = UTC).

    The result is timezone-aware, in `timezone`. Raises ValueError for a bad expression or timezone.
    """
    return parse(cron, timezone).next(after)
