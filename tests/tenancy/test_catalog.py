from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gateway.tenancy import (Catalog, FakeClock, ModelNotFound, ModelRetired, ModelUnavailable, PermissionDenied,
                             Tenancy)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog.load(FakeClock(at("2026-01-01T00:00:00")))
    for name in c.names():
        c.set_hosts(name, ["gpu-1"])
    return c


def test_seed_catalog_contents() -> None:
    c = Catalog.load(FakeClock())
    names = set(c.names())
    assert len(names) == 48 and "smollm2:135m" in names
    for name, end in [("deepcoder:14b", "2026-06-30"), ("cogito:32b", "2026-06-30"), ("deepseek-r1:671b", "2025-12-31"),
                      ("qwq:32b", "2025-12-31"), ("foundation-sec:8b", "2025-09-30"),
                      ("lucie-instruct:7b", "2025-10-30"), ("mistral-small3.2:24b", "2026-03-30"),
                      ("qwen3:30b-a3b", "2026-12-31"), ("granite-embedding:278m", "2026-12-31")]:
        entry = c.get(name)
        assert entry is not None and str(entry.end_of_support) == end, name
    assert str(c.get("mistral-small3.2:24b").go_live) == "2025-06-23"  # type: ignore[union-attr]
    assert str(c.get("gemma3:27b").go_live) == "2025-06-13"  # type: ignore[union-attr]
    assert c.get("smollm2:135m").hosts == ["local"]  # type: ignore[union-attr]


def test_lifecycle_through_time(catalog: Catalog) -> None:
    clock: FakeClock = catalog._clock  # type: ignore[assignment]
    name = "mistral-small3.2:24b"  # supported through 2026-03-30
    clock.set(at("2025-06-22T23:59:59"))
    with pytest.raises(ModelNotFound, match="not available before 2025-06-23"):
        catalog.check(name)
    clock.set(at("2025-12-30T23:59:59"))
    life = catalog.check(name)
    assert life.headers == [] and life.warning is None and life.phase == "production"
    clock.set(at("2025-12-31T00:00:00"))  # three months before the end of 2026-03-30
    life = catalog.check(name)
    assert life.phase == "deprecated" and "2026-03-30" in (life.warning or "")
    headers = dict(life.headers)
    assert headers["sunset"] == "Tue, 31 Mar 2026 00:00:00 GMT"
    assert headers["deprecation"] == f"@{int(at('2025-12-31T00:00:00'))}"
    assert catalog.card_fields(name)["phase"] == "deprecated"
    clock.set(at("2026-03-30T23:59:59"))
    catalog.check(name)
    clock.set(at("2026-03-31T00:00:00"))
    with pytest.raises(ModelRetired) as info:
        catalog.check(name)
    assert info.value.status == 410 and info.value.replacement == "mistral-small3.1:24b"
    assert "mistral-small3.1:24b" in info.value.message
    assert catalog.card_fields(name)["phase"] == "retired"


def test_retired_without_replacement_says_so(catalog: Catalog) -> None:
    with pytest.raises(ModelRetired) as info:
        catalog.check("foundation-sec:8b")
    assert info.value.replacement is None and "Use" not in info.value.message


def test_unknown_and_unhosted_models() -> None:
    c = Catalog.load(FakeClock(at("2026-01-01T00:00:00")))
    with pytest.raises(ModelNotFound) as info:
        c.check("gpt-5")
    assert info.value.status == 404
    with pytest.raises(ModelUnavailable) as unhosted:
        c.check("qwen3:8b")  # listed, but no engine host in the default file
    assert unhosted.value.status == 503
    assert c.check("smollm2:135m").phase == "experimental"
    assert c.card_fields("qwen3:8b")["served"] is False


def test_admission_carries_lifecycle_headers(tenancy: Tenancy) -> None:
    # The fixture clock is 2026-01-15: mistral-small3.2:24b is in its notice, qwen2.5:14b retired.
    secret, _ = tenancy.tokens.create("acme", "big")
    p = tenancy.authenticate(f"Bearer {secret}")
    a = tenancy.admit(p, "mistral-small3.2:24b", prompt_tokens=1, max_tokens=1)
    names = [k for k, _ in a.headers()]
    assert "sunset" in names and "deprecation" in names and "x-ratelimit-limit-requests" in names
    assert a.warning is not None
    with pytest.raises(ModelRetired, match="qwen3:14b"):
        tenancy.admit(p, "qwen2.5:14b", prompt_tokens=1, max_tokens=1)
    tenancy.store.flush()
    assert list(tenancy.store.audit_records())[-1].reason == "lifecycle"


def test_permission_is_checked_before_lifecycle(tenancy: Tenancy) -> None:
    # A token must not learn anything about models it may not use.
    secret, _ = tenancy.tokens.create("acme", "big", ["granite*"])
    p = tenancy.authenticate(f"Bearer {secret}")
    with pytest.raises(PermissionDenied):
        tenancy.admit(p, "qwen2.5:14b", prompt_tokens=1, max_tokens=1)


def test_notice_start_in_short_months() -> None:
    from gateway.tenancy.catalog import months_before
    assert months_before(datetime(2028, 5, 31, tzinfo=timezone.utc), 3).date().isoformat() == "2028-02-29"
    assert months_before(datetime(2027, 5, 31, tzinfo=timezone.utc), 3).date().isoformat() == "2027-02-28"
    assert months_before(datetime(2026, 1, 1, tzinfo=timezone.utc), 3).date().isoformat() == "2025-10-01"
