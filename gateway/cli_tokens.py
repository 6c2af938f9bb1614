"""`llmaas tokens create|list|revoke|rotate`, `llmaas usage` and `llmaas audit verify|export|purge`.

They work on the same store as the gateway (`--db`, or LLMAAS_DB, or ~/.local/share/llmaas/llmaas.db:
an SQLite file, or a postgresql:// URL), so they may run while it serves: a new token works at once,
a revocation within a second.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
import unicodedata
from datetime import datetime, timezone

import msgspec

from gateway import durations


def parse_duration(text: str) -> float:
    """`90d`, `12h`, `30m`, `45s`, `2w` in seconds."""
    try:
        return durations.seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_since(text: str) -> float:
    """An ISO date or time (UTC unless it says otherwise), or a duration back from now (`30d`)."""
    if durations.DURATION.match(text.strip()):
        return time.time() - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or duration: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# A name is shown in every list of tokens, a terminal's among them: no control characters (a newline
# or an escape sequence would forge or hide rows), and short enough to stay a label.
MAX_NAME_LEN = 256
# SQLite's files beside a database, and ours (the ledger's and the native lane's journals, -0 and -1).
_SIDECARS = ("-wal", "-shm", "-journal", "-ledger-journal", "-lane-journal")


def check_name(name: str) -> None:
    if len(name) > MAX_NAME_LEN or any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"a token's name is at most {MAX_NAME_LEN} characters, none of them control characters")


def check_grace(seconds: float | None) -> None:
    """A grace period: zero (the old secret ends now) up to a token's longest lifetime; past that its
    expiry is no date (every request with the old secret would fail to say when it ends)."""
    from gateway.tenancy.tokens import MAX_LIFETIME_S

    if seconds is not None and not 0.0 <= seconds <= MAX_LIFETIME_S:
        raise ValueError(f"a grace period must be at most {MAX_LIFETIME_S / 86400:.0f} days")


def printable(text: str) -> str:
    """`text` for a terminal: control and format characters (newlines, escape sequences, bidi
    overrides) written as escapes, so that a stored value cannot redraw the table around it."""
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode()
                   for c in text)


class CommandError(Exception):
    """A command that cannot go on for a reason its user can fix: printed, exit status 2."""


def store_errors() -> tuple[type[Exception], ...]:
    """What a store raises for its user to fix (a file that is no database, a server that cannot be
    reached): SQLite's errors, and psycopg's once a postgresql:// store loaded it (never for nothing)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, psycopg.Error) if psycopg is not None else (sqlite3.Error,)


def iso_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past year 9999 (a record from before lifetimes were bounded)
        return f"@{ts:.0f}"


def add_tokens_parsers(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="the store: an SQLite file or a postgresql:// URL "
                                     "(default: $LLMAAS_DB or ~/.local/share/llmaas/llmaas.db)")
    common.add_argument("--tiers", help="tier config file (default: $LLMAAS_TIERS or the built-in tiers)")

    tokens = commands.add_parser("tokens", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", parents=[common], help="make a token and print its secret once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--tier", required=True)
    create.add_argument("--models", default="*", help="comma-separated globs, e.g. 'granite*,qwen3:*'")
    create.add_argument("--expires", type=parse_duration, help="lifetime, e.g. 90d")
    create.add_argument("--name", default="", help="a label to recognise it by")
    create.add_argument("--json", action="store_true", help="print the record and secret as JSON")
    create.set_defaults(run=run_create)
    lst = tokens.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    lst.add_argument("--tenant")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(run=run_list)
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token now")
    revoke.add_argument("token_id")
    revoke.set_defaults(run=run_revoke)
    rotate = tokens.add_parser("rotate", parents=[common], help="issue a successor; the old secret lasts the grace")
    rotate.add_argument("token_id")
    rotate.add_argument("--grace", type=parse_duration, help="how long the old secret stays valid (default: policy)")
    rotate.set_defaults(run=run_rotate)

    usage = commands.add_parser("usage", parents=[common], help="usage and cost from the ledger")
    usage.add_argument("--tenant")
    usage.add_argument("--since", type=parse_since, required=True, help="ISO date or a duration back (30d)")
    usage.add_argument("--until", type=parse_since)
    usage.add_argument("--by", choices=["model", "day", "tenant"])
    usage.add_argument("--format", choices=["table", "csv", "json"], default="table")
    usage.set_defaults(run=run_usage)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(dest="action", required=True)
    verify = audit.add_parser("verify", parents=[common], help="check the hash chain; exit 1 on tampering")
    verify.set_defaults(run=run_verify)
    export = audit.add_parser("export", parents=[common], help="JSON lines, for compliance reports")
    export.add_argument("--output", "-o", help="file to write (default: stdout)")
    export.add_argument("--prompts", action="store_true",
                        help="with each kept prompt's text, decrypted with the key in LLMAAS_AUDIT_KEY")
    export.set_defaults(run=run_export)
    purge = audit.add_parser("purge", parents=[common], help="drop prompt text past its retention period")
    # A gateway's retention is in its config ([tenancy] prompt_retention); nothing in the database says it.
    source = purge.add_mutually_exclusive_group()
    source.add_argument("--retention", type=parse_duration, help="how long prompt text is kept, e.g. 90d")
    source.add_argument("--config", help="a gateway config: its [tenancy] prompt_retention (and db, unless --db)")
    purge.set_defaults(run=run_purge)
    new_key = audit.add_parser("new-key", help="print a fresh key for LLMAAS_AUDIT_KEY (AES-256, base64)")
    new_key.set_defaults(run=run_new_key)


def _db_path(args: argparse.Namespace) -> str:
    from gateway.tenancy import default_db_path

    if args.db == "" or args.tiers == "":
        raise CommandError("--db and --tiers need a path")
    return args.db or default_db_path()


def _open(args: argparse.Namespace, existing: bool = True):  # type: ignore[no-untyped-def]
    """The store, config and token service. existing: the command only reads or changes what is
    there, so a database that is not there is a mistyped path, said as such, not made (empty, it
    would list no tokens and verify as intact)."""
    # Imported here: `llmaas --help` should not pay for the store.
    from gateway.tenancy import SystemClock, load_config
    from gateway.tenancy.open_store import is_postgres, open_store
    from gateway.tenancy.tokens import TokenService

    path = _db_path(args)
    # (A PostgreSQL database that is not there is the server's to say, one without our tables the store's.)
    if existing and not is_postgres(path) and not os.path.exists(path):
        raise CommandError(f"no database at {path} (made by the first `llmaas tokens create` or gateway start)")
    try:
        config = load_config(args.tiers or os.environ.get("LLMAAS_TIERS"))
        store = open_store(path, cli=True, create=not existing)
    except ValueError as exc:  # a tier file's mistake, LLMAAS_DB_SYNC's, a database without our tables
        raise CommandError(str(exc)) from None
    return store, config, TokenService(store, SystemClock(), config.token_policy)


def _audited(store, reason: str, tenant: str | None = None,  # type: ignore[no-untyped-def]
             token_id: str | None = None) -> None:
    """The change in the audit trail, as the admin API records it (client "cli"), durable on return."""
    from gateway.tenancy import SystemClock
    from gateway.tenancy.audit import AuditTrail

    written = AuditTrail(store, SystemClock()).append(status=200, reason=reason, tenant=tenant, token_id=token_id,
                                                       client="cli")
    written.result()
    store.flush()


def _fail(message: str) -> int:
    print(f"llmaas: error: {message}", file=sys.stderr)
    return 2


def run_create(args: argparse.Namespace) -> int:
    from gateway.tenancy.permissions import parse_patterns

    store, config, tokens = _open(args, existing=False)
    try:
        config.tier(args.tier)
        check_name(args.name)
        secret, record = tokens.create(args.tenant, args.tier, parse_patterns(args.models), args.expires, args.name)
        _audited(store, "token_created", record.tenant, record.id)
    except ValueError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    if args.json:
        print(msgspec.json.encode({"id": record.id, "secret": secret, "tenant": record.tenant, "tier": record.tier,
                                   "models": record.models, "expires_at": iso_time(record.expires_at)}).decode())
    else:
        print(f"token {record.id} for tenant {record.tenant} (tier {record.tier}, models {','.join(record.models)}, "
              f"expires {iso_time(record.expires_at)})", file=sys.stderr)
        print("this secret is shown once; store it now:", file=sys.stderr)
        print(secret)
    return 0


def _tenant_filter(tenant: str | None) -> None:
    """A --tenant no token can carry (an empty one from an unset variable) matches nothing: an error,
    as in the admin API, rather than an empty answer that reads as "none"."""
    from gateway.tenancy.tokens import check_tenant

    if tenant is not None:
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise CommandError(f"--tenant: {exc}") from None


def run_list(args: argparse.Namespace) -> int:
    _tenant_filter(args.tenant)
    store, _, _ = _open(args)
    try:
        records = store.list_tokens(args.tenant)
    finally:
        store.close()
    now = time.time()
    rows = []
    for r in records:
        state = ("revoked" if r.revoked_at is not None else "expired" if r.expires_at is not None and now >= r.expires_at
                 else "rotated" if r.rotated_to else "active")
        rows.append({"id": r.id, "tenant": r.tenant, "tier": r.tier, "models": ",".join(r.models), "state": state,
                     "created": iso_time(r.created_at), "expires": iso_time(r.expires_at), "successor": r.rotated_to or "-",
                     "name": r.name})
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    cols = ["id", "tenant", "tier", "models", "state", "created", "expires", "successor", "name"]
    table = [cols, *[[printable(str(row[c])) for c in cols] for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    store, _, tokens = _open(args)
    try:
        record, revoked = tokens.revoke(args.token_id)
        if revoked:
            _audited(store, "token_revoked", record.tenant, record.id)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    finally:
        store.close()
    if revoked:
        print(f"revoked {record.id} (tenant {record.tenant})", file=sys.stderr)
    else:  # a retry changes nothing: the first revocation stands
        print(f"{record.id} (tenant {record.tenant}) was already revoked at {iso_time(record.revoked_at)}",
              file=sys.stderr)
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    try:
        check_grace(args.grace)
    except ValueError as exc:
        return _fail(str(exc))
    store, _, tokens = _open(args)
    try:
        secret, new, old = tokens.rotate(args.token_id, args.grace)
        _audited(store, "token_rotated", new.tenant, new.id)
    except (KeyError, ValueError) as exc:
        return _fail(str(exc.args[0]))
    finally:
        store.close()
    print(f"token {new.id} replaces {old.id}, which stays valid until {iso_time(old.expires_at)}", file=sys.stderr)
    print("this secret is shown once; store it now:", file=sys.stderr)
    print(secret)
    return 0


def run_usage(args: argparse.Namespace) -> int:
    from gateway.tenancy.ledger import render, summarize

    if args.until is not None and args.until < args.since:
        return _fail("--until is before --since")
    _tenant_filter(args.tenant)
    store, _, _ = _open(args)
    try:
        rows = store.usage(args.tenant, args.since, args.until)
    finally:
        store.close()
    sys.stdout.write(render(summarize(rows, args.by), args.format, args.by))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from gateway.tenancy.audit import verify

    store, _, _ = _open(args)
    try:
        heads = store.audit_heads()
        problems = verify(store.audit_records(), heads)
    finally:
        store.close()
    for p in problems:
        print(f"{f'chain {p.chain} ' if p.chain else ''}record {p.seq}: {p.kind}: {p.message}")
    # Operators note the heads outside the database: a chain rewritten whole, head included, verifies.
    for chain, (seq, digest) in sorted(heads.items()):
        print(f"head of chain {chain or '-'}: record {seq}, hash {digest or '-'}", file=sys.stderr)
    if problems:
        print(f"audit trail: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("audit trail: intact", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from gateway.tenancy.audit import export_jsonl
    from gateway.tenancy.encryption import KEY_ENV, PromptCipher, load_key

    if args.output and _is_store_file(args.output, _db_path(args)):
        raise CommandError(f"--output {args.output} is one of the store's own files: it would be overwritten")
    cipher = None
    if args.prompts:
        try:
            key = load_key()
        except ValueError as exc:  # not base64, not 32 bytes
            return _fail(f"{KEY_ENV}: {exc}")
        if key is None:
            return _fail(f"--prompts decrypts the kept prompts: set {KEY_ENV} to the gateway's key")
        cipher = PromptCipher(key)
    store, _, _ = _open(args)
    try:
        if cipher is not None:  # someone reads the prompts: that access is on the record, before any is written
            _audited(store, "prompts_exported")
        out = open(args.output, "wb") if args.output else sys.stdout.buffer
        try:
            for line in export_jsonl(store.audit_records(), cipher):
                out.write(line)
        except ValueError as exc:  # a prompt that this key does not open
            return _fail(f"{exc}: is {KEY_ENV} the gateway's key?")
        finally:
            if args.output:
                out.close()
    finally:
        store.close()
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from gateway.tenancy import SystemClock
    from gateway.tenancy.audit import AuditTrail

    retention = args.retention
    if args.config is not None:
        from gateway.fleet.config import ConfigError, load_config

        try:
            tenancy = load_config(args.config).tenancy
        except ConfigError as exc:
            return _fail(str(exc))
        retention = tenancy.prompt_retention_s
        if retention is None:
            return _fail(f"{args.config} keeps no prompt text: its [tenancy] sets no prompt_retention")
        args.db = args.db if args.db is not None else tenancy.db
    if retention is None:
        return _fail("no retention period: say how long prompt text is kept, e.g. --retention 90d, or give "
                     "the gateway's --config")
    if retention <= 0:
        return _fail("--retention must be longer than zero")
    store, _, _ = _open(args)
    try:
        purged = AuditTrail(store, SystemClock(), retention_s=retention).purge()
        _audited(store, "prompts_purged")
    finally:
        store.close()
    print(f"purged the prompt text of {purged} audit record(s)")
    return 0


def run_new_key(args: argparse.Namespace) -> int:
    from gateway.tenancy.encryption import new_key

    print(new_key())
    return 0


def _is_store_file(path: str, db: str) -> bool:
    """Whether writing `path` would write over the database or one of its sidecars (`<db>-wal`,
    the journals), by any name for them (a relative path, a link). A PostgreSQL database has no file here."""
    from gateway.tenancy.open_store import is_postgres

    if is_postgres(db):
        return False
    out, base = os.path.realpath(path), os.path.realpath(db)
    if out == base or out.startswith(tuple(base + suffix for suffix in _SIDECARS)):
        return True
    try:
        return os.path.samefile(path, db)  # a hard link to the database
    except OSError:  # either is not there
        return False
