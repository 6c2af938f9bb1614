"""Usage counts, the cost formula and usage reports over the ledger.

Counts follow OpenAI's usage block: `input` includes the `cached_input` tokens served by the
prefix cache, and `output` includes the `reasoning` tokens. Cost, in EUR, with prices per million:

    (input - cached_input) x input_price + cached_input x cached_input_price
    + (output - reasoning) x output_price + reasoning x reasoning_price

With the default prices (0.9 input and cached input, 4 output, 21 reasoning) that is the issue's
`input x 0.9 + output x 4 + reasoning x 21`, output meaning the visible completion.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime, timezone

import msgspec

from gateway.tenancy.store import UsageRow
from gateway.tenancy.tiers import Prices


class Counts(msgspec.Struct, frozen=True):
    input: int = 0
    cached_input: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output


def cost_eur(counts: Counts, prices: Prices) -> float:
    fresh = counts.input - counts.cached_input
    visible = counts.output - counts.reasoning
    return (fresh * prices.input + counts.cached_input * prices.cached_input
            + visible * prices.output + counts.reasoning * prices.reasoning) / 1e6


def worst_case_cost(prompt_tokens: int, max_tokens: int, prices: Prices) -> float:
    """What a request can cost at most: reserved against the budget at admission."""
    return (prompt_tokens * max(prices.input, prices.cached_input)
            + max_tokens * max(prices.output, prices.reasoning)) / 1e6


class UsageTotals(msgspec.Struct):
    key: str
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_eur: float = 0.0


def _key(row: UsageRow, by: str | None) -> str:
    if by == "model":
        return row.model
    if by == "day":
        return datetime.fromtimestamp(row.time, timezone.utc).strftime("%Y-%m-%d")
    if by == "tenant":
        return row.tenant
    return "total"


def summarize(rows: Iterable[UsageRow], by: str | None = None) -> list[UsageTotals]:
    totals: dict[str, UsageTotals] = {}
    for row in rows:
        key = _key(row, by)
        t = totals.get(key)
        if t is None:
            t = totals[key] = UsageTotals(key)
        t.requests += 1
        t.input_tokens += row.input_tokens
        t.cached_input_tokens += row.cached_input_tokens
        t.output_tokens += row.output_tokens
        t.reasoning_tokens += row.reasoning_tokens
        t.cost_eur += row.cost_eur
    return [totals[k] for k in sorted(totals)]


_COLUMNS = list(UsageTotals.__struct_fields__)
# A spreadsheet reads a cell starting with one of these as a formula (a tenant may be named `-2+3`
# or `@x`, a catalog model anything): such a cell is quoted with a leading apostrophe (OWASP's advice).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def render(totals: list[UsageTotals], fmt: str, by: str | None) -> str:
    header = [by or "period", *_COLUMNS[1:]]
    rows = [[t.key, t.requests, t.input_tokens, t.cached_input_tokens, t.output_tokens, t.reasoning_tokens,
             f"{t.cost_eur:.6f}"] for t in totals]
    if fmt == "json":
        return msgspec.json.encode(totals).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_csv_text(r[0]), *r[1:]] for r in rows)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in cells) + "\n"
