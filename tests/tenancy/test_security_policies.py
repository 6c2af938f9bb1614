"""Per-tenant security policies in the store: set, read from memory, deleted, reloaded."""

from __future__ import annotations

from pathlib import Path

import security
from gateway.tenancy import FakeClock, SqliteStore
from gateway.tenancy.security_policies import SecurityPolicies
from gateway.tenancy.store import PolicyRecord
from tests.tenancy.conftest import NOW


def test_put_get_delete_and_reload(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    store = SqliteStore(tmp_path / "p.db")
    policies = SecurityPolicies(store, clock)
    assert policies.get("acme") is None and policies.get(None) is None
    lenient = security.Policy(patterns="flag_only", behaviour="off")
    record = policies.put("acme", lenient)
    assert record == PolicyRecord(tenant="acme", modes={"structure": "on", "patterns": "flag_only", "behaviour": "off"},
                                  updated_at=NOW)
    assert policies.get("acme") == lenient and policies.get("beta") is None
    clock.advance(5)
    policies.put("beta", security.Policy(structure="off"))
    store.close()

    store = SqliteStore(tmp_path / "p.db")
    reloaded = SecurityPolicies(store, clock)
    assert reloaded.get("acme") == lenient
    assert [(r.tenant, r.updated_at) for r in reloaded.records()] == [("acme", NOW), ("beta", NOW + 5)]
    assert reloaded.delete("acme") and not reloaded.delete("acme")
    assert reloaded.get("acme") is None and [r.tenant for r in store.policies()] == ["beta"]
    store.close()


def test_a_stored_policy_that_no_longer_validates_is_ignored(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    store.put_policy(PolicyRecord(tenant="old", modes={"heuristics": "off"}, updated_at=NOW)).result()
    store.put_policy(PolicyRecord(tenant="ok", modes={"patterns": "off"}, updated_at=NOW)).result()
    policies = SecurityPolicies(store, FakeClock(NOW))
    assert policies.get("old") is None  # the config's policy applies
    assert policies.get("ok") == security.Policy(patterns="off")
    store.close()


def test_a_change_made_by_another_process_applies_within_the_refresh_delay(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    store = SqliteStore(tmp_path / "p.db")
    ours = SecurityPolicies(store, clock, refresh_s=2.0)
    other_store = SqliteStore(tmp_path / "p.db")  # another gateway on the same database
    theirs = SecurityPolicies(other_store, clock, refresh_s=2.0)
    lenient = security.Policy(patterns="off")
    theirs.put("acme", lenient)
    assert ours.get("acme") is None  # not yet re-read
    clock.advance(2.5)
    assert ours.get("acme") == lenient
    theirs.delete("acme")
    clock.advance(2.5)
    assert ours.get("acme") is None
    # The admin API's view too, on a gateway whose requests never ask (security off there).
    theirs.put("globex", lenient)
    clock.advance(2.5)
    assert [r.tenant for r in ours.records()] == ["globex"] and ours.record("globex") is not None
    theirs.delete("globex")
    clock.advance(2.5)
    assert ours.records() == [] and ours.record("globex") is None
    store.close()
    other_store.close()
