"""The model catalog and each model's lifecycle, evaluated against an injectable clock.

Timeline of a model with end-of-support day E (UTC):
- before go-live: refused, 404 model_not_found ("not available before ...");
- until 3 months before the end of E: served normally, phase as declared;
- the 3-month notice: served, phase "deprecated", with `Deprecation: @<notice start>` (RFC 9745),
  `Sunset: <end, HTTP-date>` (RFC 8594) and a warning text the gateway puts in the response;
- from the end of E on: refused, 410 model_retired, naming the replacement when the catalog gives one.
A listed model that no engine host serves is refused with 503 model_not_served.
"""

from __future__ import annotations

import calendar
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from gateway.tenancy.clock import Clock
from gateway.tenancy.errors import ModelNotFound, ModelRetired, ModelUnavailable

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")
NOTICE_MONTHS = 3
PHASES = ("production", "experimental", "deprecated")


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def months_before(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 - months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    # The same day of the month, or that month's last day when it is shorter (May 31 -> Feb 28/29).
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


@dataclass(slots=True)
class ModelEntry:
    name: str
    publisher: str
    phase: str
    go_live: date
    end_of_support: date | None
    hosts: list[str]
    replacement: str | None = None
    # Derived once, so the request path compares floats only.
    live_at: float = 0.0
    notice_at: float = float("inf")
    retired_at: float = float("inf")
    notice_headers: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"{self.name}: unknown phase {self.phase!r}")
        self.live_at = _utc(self.go_live).timestamp()
        if self.end_of_support is not None:
            retired = _utc(self.end_of_support) + timedelta(days=1)  # supported through that day
            notice = months_before(retired, NOTICE_MONTHS)
            self.retired_at, self.notice_at = retired.timestamp(), notice.timestamp()
            self.notice_headers = [("deprecation", f"@{int(self.notice_at)}"),
                                   ("sunset", format_datetime(retired, usegmt=True))]


@dataclass(slots=True)
class Lifecycle:
    """A servable model's state now: the headers and warning its response carries."""

    entry: ModelEntry
    phase: str
    headers: list[tuple[str, str]]
    warning: str | None


class Catalog:
    def __init__(self, entries: list[ModelEntry], clock: Clock) -> None:
        self._entries = {e.name: e for e in entries}
        if len(self._entries) != len(entries):
            raise ValueError("duplicate model name in the catalog")
        self._clock = clock

    @classmethod
    def load(cls, clock: Clock, path: str | Path | None = None) -> Catalog:
        with open(path or DEFAULT_CATALOG, "rb") as f:
            data = tomllib.load(f)
        entries = [ModelEntry(name=m["name"], publisher=m.get("publisher", ""), phase=m.get("phase", "production"),
                              go_live=m["go_live"], end_of_support=m.get("end_of_support"),
                              hosts=list(m.get("hosts", [])), replacement=m.get("replacement"))
                   for m in data.get("models", [])]
        return cls(entries, clock)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def set_hosts(self, name: str, hosts: list[str]) -> None:
        """Where a model is served, as the gateway's backend config says (overrides the file). A
        served model the catalog does not list is added as a production model with no end date."""
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = ModelEntry(name=name, publisher="", phase="production",
                                                      go_live=date(1970, 1, 1), end_of_support=None, hosts=[])
        entry.hosts = list(hosts)

    def phase(self, entry: ModelEntry, now: float) -> str:
        if now >= entry.retired_at:
            return "retired"
        if now >= entry.notice_at:
            return "deprecated"
        return entry.phase

    def check(self, name: str) -> Lifecycle:
        """The model's lifecycle if it may be served now; raises ModelNotFound, ModelRetired or
        ModelUnavailable otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"The model `{name}` does not exist.", param="model")
        now = self._clock.time()
        if now < entry.live_at:
            raise ModelNotFound(f"The model `{name}` is not available before {entry.go_live.isoformat()}.",
                                param="model")
        if now >= entry.retired_at:
            hint = f" Use `{entry.replacement}` instead." if entry.replacement else ""
            raise ModelRetired(f"The model `{name}` reached its end of support on "
                               f"{entry.end_of_support.isoformat()} and is no longer served.{hint}",  # type: ignore[union-attr]
                               entry.replacement)
        if not entry.hosts:
            raise ModelUnavailable(f"The model `{name}` is listed in the catalog but not served here.",
                                   param="model")
        if now >= entry.notice_at:
            hint = f"; use `{entry.replacement}` instead" if entry.replacement else ""
            warning = (f"The model `{name}` is deprecated and will be retired after "
                       f"{entry.end_of_support.isoformat()}{hint}.")  # type: ignore[union-attr]
            return Lifecycle(entry, "deprecated", entry.notice_headers, warning)
        return Lifecycle(entry, entry.phase, [], None)

    def card_fields(self, name: str) -> dict[str, object]:
        """The lifecycle fields `/v1/models` shows for a model."""
        e = self._entries[name]
        return {"publisher": e.publisher, "phase": self.phase(e, self._clock.time()),
                "go_live": e.go_live.isoformat(),
                "end_of_support": e.end_of_support.isoformat() if e.end_of_support else None,
                "replacement": e.replacement, "served": bool(e.hosts)}
