from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli_tokens import CommandError, add_tokens_parsers, iso_time, parse_duration
from gateway.tenancy import AuthenticationError, Catalog, SqliteStore, SystemClock, Tenancy, load_config


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmaas")
    add_tokens_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "cli.db")


def gateway(db: str) -> Tenancy:
    clock = SystemClock()
    return Tenancy(SqliteStore(db), load_config(), Catalog.load(clock), clock)


def test_create_use_list_rotate_revoke(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard",
                "--models", "granite*,qwen3:*", "--expires", "90d"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("llmaas-")
    served = gateway(db)
    try:
        p = served.authenticate(f"Bearer {secret}")
        assert (p.tenant, p.tier.name) == ("acme", "standard")
        assert served.visible_models(p) and all(m.startswith(("granite", "qwen3:")) for m in served.visible_models(p))

        assert cli(["tokens", "list", "--db", db, "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert (row["id"], row["state"], row["models"]) == (p.token_id, "active", "granite*,qwen3:*")
        assert secret not in json.dumps(row)

        assert cli(["tokens", "rotate", "--db", db, p.token_id, "--grace", "1h"]) == 0
        new_secret = capsys.readouterr().out.strip()
        assert served.authenticate(f"Bearer {new_secret}").tenant == "acme"

        assert cli(["tokens", "revoke", "--db", db, p.token_id]) == 0
        served.tokens._checked_at -= 3600  # as if the refresh interval passed
        with pytest.raises(AuthenticationError, match="revoked"):
            served.authenticate(f"Bearer {secret}")
        # Each change in the audit trail, by the CLI, and the chains intact.
        changes = [(a.reason, a.client) for a in served.store.audit_records() if a.reason.startswith("token_")]
        assert changes == [("token_created", "cli"), ("token_rotated", "cli"), ("token_revoked", "cli")]
        assert served.audit.verify() == []
    finally:
        served.close()


def test_revoking_twice_says_when_it_was_revoked_and_changes_nothing(db: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard", "--json"]) == 0
    token_id = json.loads(capsys.readouterr().out)["id"]
    assert cli(["tokens", "revoke", "--db", db, token_id]) == 0
    assert capsys.readouterr().err.startswith(f"revoked {token_id}")
    store = SqliteStore(db)
    try:
        first = store.get_token(token_id)
        assert first is not None and first.revoked_at is not None
        assert cli(["tokens", "revoke", "--db", db, token_id]) == 0
        assert capsys.readouterr().err == (f"{token_id} (tenant acme) was already revoked at "
                                           f"{iso_time(first.revoked_at)}\n")
        assert store.get_token(token_id) == first
        assert [a.reason for a in store.audit_records()] == ["token_created", "token_revoked"]
    finally:
        store.close()


def test_errors_exit_2(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "gold"]) == 2
    assert "unknown tier" in capsys.readouterr().err
    assert cli(["tokens", "revoke", "--db", db, "nope"]) == 2
    with pytest.raises(SystemExit):
        cli(["tokens", "create", "--db", db, "--tenant", "a", "--tier", "free", "--expires", "soon"])


def llmaas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("case", ["db is a directory", "db is not a database", "db cannot be made", "tiers missing",
                                  "tiers not TOML", "bad sync", "empty db", "export to nowhere", "no models",
                                  "empty tenant", "zero lifetime"])
def test_mistakes_are_said_in_a_line_not_a_traceback(tmp_path: Path, case: str) -> None:
    db = str(tmp_path / "ok.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, not at all" * 100)
    bad_toml = tmp_path / "tiers.toml"
    bad_toml.write_text("[tiers.x\n")
    create = ["tokens", "create", "--tenant", "acme", "--tier", "standard"]
    argv, env = {
        "db is a directory": ([*create, "--db", str(tmp_path)], None),
        "db is not a database": ([*create, "--db", str(junk)], None),
        "db cannot be made": ([*create, "--db", "/proc/nope/x.db"], None),
        "tiers missing": ([*create, "--db", db, "--tiers", str(tmp_path / "none.toml")], None),
        "tiers not TOML": ([*create, "--db", db, "--tiers", str(bad_toml)], None),
        "bad sync": ([*create, "--db", db], {"LLMAAS_DB_SYNC": "bogus"}),
        "empty db": ([*create, "--db", ""], None),
        "export to nowhere": (["audit", "export", "--db", db, "-o", str(tmp_path / "no" / "x.jsonl")], None),
        "no models": ([*create, "--db", db, "--models", ","], None),
        "empty tenant": (["tokens", "create", "--tenant", "", "--tier", "standard", "--db", db], None),
        "zero lifetime": ([*create, "--db", db, "--expires", "0d"], None),
    }[case]
    result = llmaas(*argv, env=env)
    assert result.returncode == 2 and result.stderr.startswith("llmaas: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("argv", [
    ["audit", "verify"], ["audit", "export"], ["audit", "purge", "--retention", "90d"], ["tokens", "list"],
    ["tokens", "revoke", "abcdefghijkl"], ["tokens", "rotate", "abcdefghijkl"], ["usage", "--since", "1d"],
])
def test_a_command_on_a_database_not_there_says_so_and_makes_none(tmp_path: Path, argv: list[str]) -> None:
    # A mistyped --db used to be made, empty, and then verified as intact, listed as no tokens.
    db = tmp_path / "no" / "such.db"
    result = llmaas(*argv, "--db", str(db))
    assert result.returncode == 2 and result.stderr.startswith("llmaas: error: no database at "), result.stderr
    assert not db.parent.exists()


def test_export_never_writes_over_the_store(tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `-o` naming the database truncated it: every token, row and record gone.
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard"]) == 0
    capsys.readouterr()
    os.link(db, tmp_path / "hard.db")
    os.symlink(db, tmp_path / "soft.db")
    for target in (db, db + "-wal", db + "-ledger-journal-0", str(tmp_path / "hard.db"), str(tmp_path / "soft.db"),
                   os.path.relpath(db)):
        result = llmaas("audit", "export", "--db", db, "-o", target)
        assert result.returncode == 2 and "one of the store's own files" in result.stderr, (target, result.stderr)
    assert cli(["audit", "export", "--db", db, "-o", db + ".jsonl"]) == 0
    assert cli(["tokens", "list", "--db", db, "--json"]) == 0 and len(json.loads(capsys.readouterr().out)) == 1
    assert cli(["audit", "verify", "--db", db]) == 0


def test_the_sidecars_export_avoids_are_the_stores() -> None:
    from gateway.cli_tokens import _SIDECARS
    from gateway.tenancy import journal, lane_ledger
    assert journal.SUFFIX in _SIDECARS and lane_ledger.SUFFIX in _SIDECARS


def test_names_and_tenants_an_operator_could_not_read_back(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard", "--name", "a\nb"]) == 2
    assert "control characters" in capsys.readouterr().err
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard", "--name", "ok"]) == 0
    capsys.readouterr()
    # A name stored by other means (an older version, a hand edit) cannot forge rows or colours.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tokens SET name = ?", ("x\nforged  acme  big\x1b[31m\u202e",))
    conn.commit()
    conn.close()
    assert cli(["tokens", "list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].endswith("x\\nforged  acme  big\\x1b[31m\\u202e")
    # An empty --tenant (an unset variable) is a mistake, as in the admin API, not "no tokens".
    for argv in (["tokens", "list", "--tenant", ""], ["usage", "--since", "1d", "--tenant", "a b"]):
        with pytest.raises(CommandError, match="--tenant: a tenant name is"):
            cli([*argv, "--db", db])


def test_a_grace_past_any_date_is_refused(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard", "--json"]) == 0
    token_id = json.loads(capsys.readouterr().out)["id"]
    assert cli(["tokens", "rotate", "--db", db, token_id, "--grace", "99999999d"]) == 2
    assert "grace period" in capsys.readouterr().err
    assert cli(["tokens", "rotate", "--db", db, token_id, "--grace", "0s"]) == 0


def test_usage_and_audit(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.tenancy import Counts

    served = gateway(db)
    try:
        secret, _ = served.tokens.create("acme", "standard")
        p = served.authenticate(f"Bearer {secret}")
        for _ in range(3):
            a = served.admit(p, "smollm2:135m", prompt_tokens=10, max_tokens=5)
            served.finish(a, Counts(10, 2, 5, 0)).result()
    finally:
        served.close()
    assert cli(["usage", "--db", db, "--tenant", "acme", "--since", "1d", "--by", "model", "--format", "json"]) == 0
    (total,) = json.loads(capsys.readouterr().out)
    assert (total["key"], total["requests"], total["input_tokens"], total["output_tokens"]) == ("smollm2:135m", 3, 30, 15)
    assert cli(["audit", "verify", "--db", db]) == 0
    assert "intact" in capsys.readouterr().err
    assert cli(["audit", "export", "--db", db]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    conn = sqlite3.connect(db)
    conn.execute("UPDATE audit SET status = 500 WHERE seq = 2")
    conn.commit()
    conn.close()
    assert cli(["audit", "verify", "--db", db]) == 1
    assert "record 2: edited" in capsys.readouterr().out


def test_audit_purge_drops_prompt_text_past_the_retention_it_is_given(db: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.tenancy import FakeClock
    from gateway.tenancy.encryption import load_key, new_key

    clock = FakeClock(time.time() - 2 * 86400)  # a gateway keeping prompt text, two days ago and now
    served = Tenancy(SqliteStore(db), load_config(), Catalog.load(clock), clock, audit_key=load_key(new_key()),
                     prompt_retention_s=30 * 86400)
    try:
        served.audit.append(status=200, reason="ok", request_id="old", prompt="two days old").result()
        clock.set(time.time())
        served.audit.append(status=200, reason="ok", request_id="fresh", prompt="just now").result()
    finally:
        served.close()
    assert cli(["audit", "purge", "--db", db, "--retention", "1d"]) == 0
    assert capsys.readouterr().out == "purged the prompt text of 1 audit record(s)\n"
    # The gateway's own config says the retention, and where its database is.
    config = Path(db).parent / "gateway.toml"
    config.write_text(f'[[models]]\nname = "m"\nhosts = ["http://127.0.0.1:1"]\n'
                      f'[tenancy]\ndb = "{db}"\nprompt_retention = "1d"\n')
    assert cli(["audit", "purge", "--config", str(config)]) == 0  # nothing left past it
    assert capsys.readouterr().out == "purged the prompt text of 0 audit record(s)\n"
    store = SqliteStore(db)
    try:
        records = list(store.audit_records())
    finally:
        store.close()
    assert {r.request_id: r.prompt is not None for r in records if r.prompt_digest} == {"old": False, "fresh": True}
    # Each purge recorded as the admin API records one, by the CLI; the chains intact.
    changes = [(r.reason, r.tenant, r.client) for r in records if not r.prompt_digest]
    assert changes == [("prompts_purged", None, "cli")] * 2
    assert cli(["audit", "verify", "--db", db]) == 0


@pytest.mark.parametrize("retention,message", [
    ([], "no retention period: say how long prompt text is kept, e.g. --retention 90d, or give the gateway's "
         "--config"),
    (["--retention", "0d"], "--retention must be longer than zero"),
])
def test_audit_purge_without_a_retention_says_so(db: str, capsys: pytest.CaptureFixture[str], retention: list[str],
                                                 message: str) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard"]) == 0
    capsys.readouterr()
    assert cli(["audit", "purge", "--db", db, *retention]) == 2
    assert capsys.readouterr().err == f"llmaas: error: {message}\n"


def test_audit_purge_reads_the_gateway_config(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["tokens", "create", "--db", db, "--tenant", "acme", "--tier", "standard"]) == 0
    capsys.readouterr()
    config = tmp_path / "gateway.toml"
    config.write_text('[[models]]\nname = "m"\nhosts = ["http://127.0.0.1:1"]\n')
    assert cli(["audit", "purge", "--db", db, "--config", str(config)]) == 2
    message = f"{config} keeps no prompt text: its [tenancy] sets no prompt_retention"
    assert capsys.readouterr().err == f"llmaas: error: {message}\n"
    config.write_text('[[models]]\nname = "m"\nhosts = ["http://127.0.0.1:1"]\n[tenancy]\nprompt_retention = "soon"\n')
    assert cli(["audit", "purge", "--db", db, "--config", str(config)]) == 2
    assert "prompt_retention: not a duration: 'soon'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source of the retention, not two
        cli(["audit", "purge", "--db", db, "--config", str(config), "--retention", "1d"])


def test_parse_duration() -> None:
    assert parse_duration("90d") == 90 * 86400 and parse_duration("30m") == 1800 and parse_duration("2w") == 14 * 86400
