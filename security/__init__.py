"""Prompt security: structure, patterns and behaviour checks run by the gateway on each request.

Public API (the gateway depends on nothing else):
- check(messages, tenant=None, policy=None, history=None) -> Verdict
- check_text(text, tenant=None, policy=None, history=None) -> Verdict
- Policy (per-layer "on" / "flag_only" / "off"), History (bounded per-tenant memory)
- BLOCK_CODE, BLOCK_MESSAGE, error_body() for the 400 answered on a block.
"""

from __future__ import annotations

from security.check import check, check_text, default_history
from security.history import History
from security.rules import default_rules
from security.verdict import BLOCK_CODE, BLOCK_MESSAGE, Match, Policy, Verdict, error_body

__all__ = [
    "BLOCK_CODE", "BLOCK_MESSAGE", "History", "Match", "Policy", "Verdict", "check", "check_text",
    "default_history", "default_rules", "error_body", "rules_version", "warm",
]


def warm() -> None:
    """Compile the rules, build the Unicode tables and teach the native fold table now (~1.1 s
    with the import on the project's CPU box) rather than on the first request; the gateway
    calls this at startup."""
    from security.normalize import fold

    default_rules()
    fold("\u00e9")


def rules_version() -> str:
    """Versions of the rule files in use (for the audit trail)."""
    return default_rules().version
