"""Times as dotsim writes them into its files: ISO 8601 in UTC."""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def utc_iso(moment: datetime.datetime | float | None = None, timespec: str = "seconds") -> str:
    """``moment`` (now when None; a float is a Unix time) as ISO 8601 in UTC."""
    if moment is None:
        moment = utc_now()
    elif not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return moment.isoformat(timespec=timespec)
