"""Billing tiers, prices and the token policy, read from one TOML config file.

```toml
[tiers.standard]
requests_per_minute = 600
tokens_per_minute = 200000      # input + output
concurrent_requests = 32
max_tokens_per_request = 8192   # prompt + completion of one request
monthly_budget_eur = 500.0
priority = 1                    # fed to the engine's scheduler; higher runs first
prices = { output = 3.5 }       # optional per-tier override, EUR per million tokens

[prices.default]                # EUR per million tokens
input = 0.9
cached_input = 0.9
output = 4.0
reasoning = 21.0

[prices.models."qwen3:235b"]
output = 8.0

[tokens]
max_age_days = 90               # auto-rotation policy; 0 turns it off
grace_days = 7                  # how long a rotated secret stays valid
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("default_tiers.toml")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Prices:
    """EUR per million tokens. Output is the visible completion; reasoning is billed apart."""

    input: float = 0.9
    cached_input: float = 0.9
    output: float = 4.0
    reasoning: float = 21.0

    def override(self, table: dict[str, float]) -> Prices:
        unknown = set(table) - {"input", "cached_input", "output", "reasoning"}
        if unknown:
            raise ValueError(f"unknown price field(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: float(v) for k, v in table.items()})


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    requests_per_minute: int
    tokens_per_minute: int
    concurrent_requests: int
    max_tokens_per_request: int
    monthly_budget_eur: float
    priority: int = 0
    prices: dict[str, float] = field(default_factory=dict)  # per-tier override of the model prices


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    max_age_s: float = 90 * DAY  # 0: no automatic rotation
    grace_s: float = 7 * DAY


@dataclass(frozen=True, slots=True)
class TierConfig:
    tiers: dict[str, Tier]
    default_prices: Prices
    model_prices: dict[str, dict[str, float]]
    token_policy: TokenPolicy

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise ValueError(f"unknown tier {name!r} (known: {', '.join(sorted(self.tiers))})") from None

    def prices(self, model: str, tier: Tier) -> Prices:
        """Default prices, then the model's override, then the tier's (the most specific wins)."""
        prices = self.default_prices
        if model in self.model_prices:
            prices = prices.override(self.model_prices[model])
        if tier.prices:
            prices = prices.override(tier.prices)
        return prices


_TIER_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "max_tokens_per_request")


def parse_config(data: dict) -> TierConfig:
    tiers: dict[str, Tier] = {}
    for name, t in data.get("tiers", {}).items():
        missing = [f for f in (*_TIER_FIELDS, "monthly_budget_eur") if f not in t]
        if missing:
            raise ValueError(f"tier {name!r} lacks {', '.join(missing)}")
        ints = {f: int(t[f]) for f in _TIER_FIELDS}
        if any(v <= 0 for v in ints.values()):
            raise ValueError(f"tier {name!r}: limits must be positive")
        tiers[name] = Tier(name=name, **ints, monthly_budget_eur=float(t["monthly_budget_eur"]),
                           priority=int(t.get("priority", 0)), prices=dict(t.get("prices", {})))
    prices = data.get("prices", {})
    default = Prices().override(prices.get("default", {}))
    models = {m: dict(p) for m, p in prices.get("models", {}).items()}
    for table in [*models.values(), *(t.prices for t in tiers.values())]:
        default.override(table)  # validates the field names now, not on the first request
    tok = data.get("tokens", {})
    policy = TokenPolicy(max_age_s=float(tok.get("max_age_days", 90)) * DAY,
                         grace_s=float(tok.get("grace_days", 7)) * DAY)
    return TierConfig(tiers=tiers, default_prices=default, model_prices=models, token_policy=policy)


def load_config(path: str | Path | None = None) -> TierConfig:
    with open(path or DEFAULT_CONFIG, "rb") as f:
        return parse_config(tomllib.load(f))
