from __future__ import annotations

import hmac

import pytest

from gateway.tenancy import AuthenticationError, FakeClock, PermissionDenied, Tenancy
from gateway.tenancy import tokens as tokens_module
from gateway.tenancy.tokens import PREFIX, split_secret

DAY = 86400.0
pytestmark = pytest.mark.both_stores  # every test here on SQLite and on PostgreSQL


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def test_create_stores_only_a_hash_and_secret_has_256_bits(tenancy: Tenancy) -> None:
    secret, record = tenancy.tokens.create("acme", "small")
    assert secret.startswith(PREFIX)
    token_id, key = split_secret(secret)  # type: ignore[misc]
    assert token_id == record.id
    assert len(key) >= 43  # 32 bytes in base64url
    stored = tenancy.store.get_token(record.id)
    assert stored is not None and key.encode() not in stored.secret_hash and stored.secret_hash != key.encode()
    rows = tenancy.store._read("SELECT * FROM tokens")
    assert all(key not in str(col) for row in rows for col in row)
    assert tenancy.tokens.create("acme", "small")[0] != secret


def test_use_returns_principal(tenancy: Tenancy) -> None:
    secret, record = tenancy.tokens.create("acme", "small", ["qwen3:*"])
    p = tenancy.authenticate(bearer(secret))
    assert (p.tenant, p.token_id, p.tier.name) == ("acme", record.id, "small")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer llmaas-nope", "Bearer " + PREFIX + "a" * 12 + "_x"])
def test_bad_credentials_are_401(tenancy: Tenancy, header: str | None) -> None:
    with pytest.raises(AuthenticationError) as info:
        tenancy.authenticate(header, request_id="r", client="10.0.0.1")
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    tenancy.store.flush()
    last = list(tenancy.store.audit_records())[-1]
    assert last.reason == "auth" and last.status == 401 and last.client == "10.0.0.1"


def test_wrong_key_for_known_id_is_401(tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "small")
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(bearer(tampered))


def test_compare_is_timing_safe(tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", spy)
    secret, record = tenancy.tokens.create("acme", "small")
    tenancy.authenticate(bearer(secret))
    assert calls and calls[-1][1] == record.secret_hash
    # An unknown id is compared too (against a dummy), so it costs the same as a wrong key.
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(bearer(PREFIX + "b" * 12 + "_" + "k" * 43))
    assert len(calls) == 2


def test_expiry(tenancy: Tenancy, clock: FakeClock) -> None:
    secret, _ = tenancy.tokens.create("acme", "small", expires_in_s=90 * DAY)
    clock.advance(90 * DAY - 1)
    tenancy.authenticate(bearer(secret))
    clock.advance(1)
    with pytest.raises(AuthenticationError, match="expired"):
        tenancy.authenticate(bearer(secret))


def test_revoke_takes_effect_in_this_process_at_once(tenancy: Tenancy) -> None:
    secret, record = tenancy.tokens.create("acme", "small")
    tenancy.authenticate(bearer(secret))
    tenancy.tokens.revoke(record.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        tenancy.authenticate(bearer(secret))


def test_revoking_twice_changes_nothing(tenancy: Tenancy, clock: FakeClock) -> None:
    _, record = tenancy.tokens.create("acme", "small")
    first, revoked = tenancy.tokens.revoke(record.id)
    assert revoked and first.revoked_at == clock.time()
    clock.advance(60.0)
    again, revoked = tenancy.tokens.revoke(record.id)
    assert not revoked and again.revoked_at == first.revoked_at
    assert tenancy.store.get_token(record.id) == first
    with pytest.raises(KeyError):
        tenancy.tokens.revoke("abcdefghijkl")


def test_a_revocation_racing_another_process_keeps_the_first_time_and_the_rotation(
        tenancy: Tenancy, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # Revoking wrote the whole record as read: a rotation, or a revocation, written meanwhile by
    # another process (the CLI, another gateway) was written over, and the revocation time moved.
    _, record = tenancy.tokens.create("acme", "small")
    stale = tenancy.store.get_token(record.id)
    other = tokens_module.TokenService(tenancy.store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
    _, successor, _ = other.rotate(record.id, grace_s=DAY)
    theirs, _ = other.revoke(record.id)
    reads = iter([stale])  # this process read the token before the other one changed it
    real_get = tenancy.store.get_token
    monkeypatch.setattr(tenancy.store, "get_token", lambda token_id: next(reads, None) or real_get(token_id))
    clock.advance(60.0)
    mine, revoked = tenancy.tokens.revoke(record.id)
    assert not revoked and mine.revoked_at == theirs.revoked_at and mine.rotated_to == successor.id
    assert real_get(record.id) == mine


def test_revoke_by_another_process_is_seen_after_refresh(tenancy: Tenancy, clock: FakeClock) -> None:
    secret, record = tenancy.tokens.create("acme", "small")
    tenancy.authenticate(bearer(secret))  # cached now
    other = tenancy.store.get_token(record.id)
    assert other is not None
    other.revoked_at = clock.time()
    tenancy.store.put_token(other).result()  # as the CLI would, behind the cache's back
    clock.advance(2.0)
    with pytest.raises(AuthenticationError, match="revoked"):
        tenancy.authenticate(bearer(secret))


def test_rotate_keeps_old_secret_for_grace_only(tenancy: Tenancy, clock: FakeClock) -> None:
    old_secret, old = tenancy.tokens.create("acme", "small", ["qwen3:*"])
    new_secret, new, old_after = tenancy.tokens.rotate(old.id, grace_s=3600)
    assert new.models == ["qwen3:*"] and new.tenant == "acme" and new.rotated_from == old.id
    assert old_after.rotated_to == new.id
    p = tenancy.authenticate(bearer(old_secret))
    assert dict(p.rotation_headers)["x-llmaas-api-key-rotated"] == new.id
    assert tenancy.authenticate(bearer(new_secret)).token_id == new.id
    clock.advance(3600)
    with pytest.raises(AuthenticationError, match="expired"):
        tenancy.authenticate(bearer(old_secret))
    assert tenancy.authenticate(bearer(new_secret)).token_id == new.id


def test_a_successor_lives_as_long_as_its_token_was_made_to(tenancy: Tenancy, clock: FakeClock) -> None:
    _, forever = tenancy.tokens.create("acme", "small")
    _, month = tenancy.tokens.create("acme", "small", expires_in_s=30 * DAY)
    clock.advance(10 * DAY)
    _, forever_next, _ = tenancy.tokens.rotate(forever.id, grace_s=DAY)
    _, month_next, _ = tenancy.tokens.rotate(month.id, grace_s=0.5 * DAY)
    assert forever_next.expires_at is None
    assert month_next.expires_at == clock.time() + 30 * DAY


def test_a_token_rotates_once_and_not_once_expired(tenancy: Tenancy, clock: FakeClock) -> None:
    _, record = tenancy.tokens.create("acme", "small", expires_in_s=DAY)
    _, successor, _ = tenancy.tokens.rotate(record.id)
    with pytest.raises(ValueError, match=f"already rotated: rotate its successor {successor.id}"):
        tenancy.tokens.rotate(record.id)
    clock.advance(2 * DAY)
    with pytest.raises(ValueError, match="has expired"):
        tenancy.tokens.rotate(successor.id)
    assert {r.id for r in tenancy.store.list_tokens("acme")} == {record.id, successor.id}


@pytest.mark.parametrize("tenant,models,expires_in_s", [
    ("", None, None), ("a b", None, None), ("a\x00b", None, None), ("x" * 129, None, None),
    ("acme", [], None), ("acme", [" ", ""], None),
    ("acme", None, 0.0), ("acme", None, -DAY), ("acme", None, 99999999999 * DAY),
])
def test_a_token_needs_a_tenant_a_model_and_a_lifetime_that_can_end(tenancy: Tenancy, tenant: str,
                                                                    models: list[str] | None,
                                                                    expires_in_s: float | None) -> None:
    with pytest.raises(ValueError):
        tenancy.tokens.create(tenant, "small", models, expires_in_s)
    assert tenancy.store.list_tokens() == []


def test_an_empty_tenant_filter_is_a_filter(tenancy: Tenancy) -> None:
    tenancy.tokens.create("acme", "small")
    assert tenancy.store.list_tokens("") == [] and len(tenancy.store.list_tokens()) == 1
    assert tenancy.store.usage("", 0.0) == []


def test_auto_rotation_after_max_age_hands_over_new_secret_once(tenancy: Tenancy, clock: FakeClock) -> None:
    secret, record = tenancy.tokens.create("acme", "small")
    clock.advance(90 * DAY)
    p = tenancy.authenticate(bearer(secret))
    headers = dict(p.rotation_headers)
    new_secret = headers["x-llmaas-new-api-key"]
    assert new_secret.startswith(PREFIX) and "x-llmaas-api-key-expires" in headers
    # The next request with the old secret is told about the rotation, without the secret.
    again = dict(tenancy.authenticate(bearer(secret)).rotation_headers)
    assert "x-llmaas-new-api-key" not in again and again["x-llmaas-api-key-rotated"] != record.id
    assert tenancy.authenticate(bearer(new_secret)).rotation_headers == []
    clock.advance(7 * DAY)
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(bearer(secret))
    tenancy.authenticate(bearer(new_secret))


def test_wrong_model_is_403(tenancy: Tenancy) -> None:
    secret, _ = tenancy.tokens.create("acme", "small", ["granite*", "qwen3:*"])
    p = tenancy.authenticate(bearer(secret))
    tenancy.admit(p, "qwen3:8b", prompt_tokens=1, max_tokens=1)
    with pytest.raises(PermissionDenied) as info:
        tenancy.admit(p, "mistral-small3.2:24b", prompt_tokens=1, max_tokens=1, request_id="r9")
    assert info.value.status == 403
    assert dict(info.value.headers)["x-ratelimit-remaining-requests"] == "4"  # nothing taken by the refusal
    visible = tenancy.visible_models(p)
    assert "qwen3:8b" in visible and "granite3.3:8b" in visible and "mistral-small3.2:24b" not in visible
    tenancy.store.flush()
    last = list(tenancy.store.audit_records())[-1]
    assert (last.reason, last.status, last.request_id) == ("permission", 403, "r9")


def test_foreign_key_from_environment(tenancy: Tenancy) -> None:
    record = tenancy.tokens.register("my-own-local-key-123", "local", "local")
    assert tenancy.tokens.register("my-own-local-key-123", "local", "local").id == record.id
    assert tenancy.authenticate(bearer("my-own-local-key-123")).tenant == "local"
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(bearer("my-own-local-key-124"))
    with pytest.raises(ValueError, match="at least 16 characters"):
        tenancy.tokens.register("short", "local", "local")


def test_a_chosen_key_in_our_secrets_namespace_is_refused_for_what_it_is(tenancy: Tenancy) -> None:
    # Long enough, but `llmaas-` marks the secrets made here (llmaas-<id>_<key>), which it is not.
    with pytest.raises(ValueError, match="starting with 'llmaas-' must be one this server made") as info:
        tenancy.tokens.register("llmaas-probe-key-0123456789abcdef0123456789", "local", "local")
    assert "16 characters" not in str(info.value)
    # A secret made here may be given back as LLMAAS_API_KEY: it is that token.
    secret, record = tenancy.tokens.create("local", "local")
    assert tenancy.tokens.register(secret, "local", "local").id == record.id


def test_concurrent_auto_rotation_makes_one_successor(tenancy: Tenancy, clock: FakeClock) -> None:
    import threading

    secret, record = tenancy.tokens.create("acme", "small")
    clock.advance(91 * DAY)
    barrier = threading.Barrier(8)
    new_keys: list[str] = []

    def call() -> None:
        barrier.wait()
        headers = dict(tenancy.authenticate(bearer(secret)).rotation_headers)
        if "x-llmaas-new-api-key" in headers:
            new_keys.append(headers["x-llmaas-new-api-key"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(new_keys) == 1
    assert len(tenancy.store.list_tokens("acme")) == 2


def test_local_token_for_serve(tenancy: Tenancy) -> None:
    first, first_id = tenancy.local_token()
    assert first is not None and tenancy.authenticate(bearer(first)).tenant == "local"
    second, _ = tenancy.local_token()  # a restart: a new secret, the old one revoked
    assert second is not None and second != first
    with pytest.raises(AuthenticationError):
        tenancy.authenticate(bearer(first))
    chosen, _ = tenancy.local_token("from-the-environment-123")
    assert chosen is None and tenancy.authenticate(bearer("from-the-environment-123")).tier.name == "local"


def test_an_unknown_id_costs_what_a_known_one_does(tenancy: Tenancy, clock: FakeClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Every token is in memory: a key with a made-up id is refused without reading the store (a
    # read made unknown ids slower than known ones, and a flood of them a flood of reads), except
    # one check for new tokens every MISS_CHECK_S whatever their number.
    secret, record = tenancy.tokens.create("acme", "small")
    tenancy.authenticate(bearer(secret))
    reads = []
    for name in ("get_token", "list_tokens", "tokens_version"):
        real = getattr(tenancy.store, name)
        monkeypatch.setattr(tenancy.store, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    for _ in range(200):
        with pytest.raises(AuthenticationError, match="Incorrect"):
            tenancy.tokens.verify(tokens_module.new_secret()[0])
        tenancy.tokens.verify(secret)
    assert reads == ["tokens_version"]  # the one miss check of this instant; nothing changed
    # A token made by another process (the CLI) is usable at once: the next miss looks again.
    other = tokens_module.TokenService(tenancy.store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
    fresh, _ = other.create("acme", "small")
    clock.advance(2 * tokens_module.MISS_CHECK_S)
    assert tenancy.tokens.verify(fresh).record.tenant == "acme"
    # Its revocation by that process holds within the refresh interval.
    other.revoke(record.id)
    clock.advance(1.0)
    with pytest.raises(AuthenticationError, match="revoked"):
        tenancy.authenticate(bearer(secret))


def test_a_malformed_token_record_refuses_its_key_alone(tenancy: Tenancy, clock: FakeClock) -> None:
    # A record whose models no CLI would write (none left once blanks are stripped) is one the lane
    # leaves to Python; the view in memory failed whole on it, and every key was refused with it.
    secret, record = tenancy.tokens.create("acme", "small")
    bad_secret, bad = tenancy.tokens.create("acme", "small")
    bad.models = [" "]
    tenancy.store.put_token(bad).result()  # behind the service's back
    restarted = tokens_module.TokenService(tenancy.store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
    for _ in range(2):
        assert restarted.verify(secret).record.id == record.id
        with pytest.raises(AuthenticationError, match="Incorrect"):
            restarted.verify(bad_secret)
        clock.advance(2.0)


def test_a_revocation_holds_when_the_wall_clock_steps_back(tenancy: Tenancy, clock: FakeClock) -> None:
    # The view's checks were timed on the wall clock: stepped back an hour (NTP, a VM resumed), it
    # waited an hour before it looked at the store again, serving a key revoked meanwhile.
    secret, record = tenancy.tokens.create("acme", "small")
    tenancy.authenticate(bearer(secret))
    clock.set(clock.time() - 3600)
    other = tokens_module.TokenService(tenancy.store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
    other.revoke(record.id)  # the CLI's way: another process
    fresh, _ = other.create("acme", "small")
    clock.advance(1.0)
    with pytest.raises(AuthenticationError, match="revoked"):
        tenancy.authenticate(bearer(secret))
    assert tenancy.tokens.verify(fresh).record.tenant == "acme"


def test_lookups_on_other_threads_wait_for_a_re_read_instead_of_refusing(tenancy: Tenancy, clock: FakeClock,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The view was marked current before it was read: a lookup on another thread meanwhile found
    # the old one (at start, empty) current, and a valid key was refused as unknown.
    import threading
    import time

    secret, record = tenancy.tokens.create("acme", "small")
    restarted = tokens_module.TokenService(tenancy.store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
    real = tenancy.store.list_tokens
    monkeypatch.setattr(tenancy.store, "list_tokens", lambda *a, **k: time.sleep(0.05) or real(*a, **k))
    barrier = threading.Barrier(8)
    found: list[str] = []

    def call() -> None:
        barrier.wait()
        try:
            found.append(restarted.verify(secret).record.id)
        except AuthenticationError as exc:
            found.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [record.id] * 8


def test_two_processes_rotating_one_token_make_one_successor(tenancy: Tenancy, clock: FakeClock) -> None:
    # Each process's rotate lock orders only its own threads: a gateway and the CLI (or two gateways
    # sharing the database) rotating at once made two successors, two new secrets both valid.
    from tests.tenancy.conftest import another

    _, record = tenancy.tokens.create("acme", "small")
    other_store = another(tenancy.store)  # its own connections, as another process has
    try:
        other = tokens_module.TokenService(other_store, clock, tenancy.config.token_policy, tenancy.tokens.pepper)
        mine = tenancy.tokens
        real_new_token = mine._new_token

        def the_other_rotates_first(*args, **kwargs):  # type: ignore[no-untyped-def]
            other.rotate(record.id)
            return real_new_token(*args, **kwargs)

        mine._new_token = the_other_rotates_first  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="already rotated"):
            mine.rotate(record.id)
        successors = [t for t in tenancy.store.list_tokens("acme") if t.rotated_from == record.id]
        assert len(successors) == 1
        assert tenancy.store.get_token(record.id).rotated_to == successors[0].id  # type: ignore[union-attr]
    finally:
        other_store.close()
