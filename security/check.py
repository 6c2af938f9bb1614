"""The check the gateway runs on every request: structure, patterns, behaviour -> one verdict.

Texts scanned: contents of user, tool and function messages (string or text parts), and
document-like parts in any role. System and assistant text is the operator's and the model's and is
not scanned. Each text is folded once; the pattern rules, the structure signals and (with a tenant)
the behaviour layer read that one folded copy. A pattern hit inside a code comment is quoted
material and counts at a fraction of its weight (quoted.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from security.history import History
from security.normalize import Folded
from security.patterns import Hit, scan
from security.quoted import Comments, hit_weights
from security.repetition import repeated_run
from security.rules import RuleSet, default_rules
from security.structure import json_signals, unicode_signals
from security.tokens import Words
from security.verdict import BLOCK_AT, DEFAULT_POLICY, FLAG_AT, Match, Policy, Verdict

SCANNED_ROLES = frozenset({"user", "tool", "function"})
DOCUMENT_PARTS = frozenset({"document", "file", "input_document", "tool_result", "search_result"})
MAX_MATCHES = 32


@dataclass(slots=True)
class _Unit:
    message: int
    part: int
    folded: Folded


@dataclass(slots=True)
class _Tally:
    policy: Policy
    fired: dict[str, tuple[float, str]] = field(default_factory=dict)  # id -> (weight, layer)
    matches: list[Match] = field(default_factory=list)

    def add(self, rule_id: str, weight: float, layer: str, unit: _Unit, span: tuple[int, int]) -> None:
        old = self.fired.get(rule_id)
        if old is None or old[0] < weight:
            self.fired[rule_id] = (weight, layer)
        if len(self.matches) < MAX_MATCHES:
            self.matches.append(Match(rule_id, unit.message, span[0], span[1], unit.part))

    def verdict(self) -> Verdict:
        blocking = sum(w for w, layer in self.fired.values() if self.policy.mode(layer) == "on")
        total = sum(w for w, _ in self.fired.values())
        action = "block" if blocking >= BLOCK_AT else "flag" if total >= FLAG_AT else "allow"
        return Verdict(action, round(float(total), 3), tuple(self.fired), tuple(self.matches))


def _units(messages: Sequence[dict]) -> Iterator[_Unit]:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        scanned_role = message.get("role") in SCANNED_ROLES
        content = message.get("content")
        if isinstance(content, str):
            if scanned_role and content:
                yield _Unit(i, -1, Folded.of(content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    continue
                if not scanned_role and part.get("type") not in DOCUMENT_PARTS:
                    continue
                text = part.get("text")
                if not isinstance(text, str):
                    text = part.get("content")
                if isinstance(text, str) and text:
                    yield _Unit(i, j, Folded.of(text))


def _spanning_hits(prefix: str, unit: _Unit, head_chars: int, rules: RuleSet) -> list[tuple[Hit, int]]:
    """Pattern hits on prefix + " " + head of unit that start in prefix and end in the unit.

    Returns each hit with its end offset inside the unit's folded text.
    """
    joined_at = len(prefix) + 1
    window = prefix + " " + unit.folded.text[:head_chars]
    out = []
    for hit in scan(window, rules.pattern_rules):
        if hit.start < len(prefix) and hit.end > joined_at:
            out.append((hit, hit.end - joined_at))
    return out


def _scan_unit(unit: _Unit, tally: _Tally, rules: RuleSet) -> None:
    policy = tally.policy
    if policy.patterns != "off":
        text = unit.folded.text
        words = Words.of(text)
        hits = scan(text, rules.pattern_rules, words)
        weights = hit_weights(hits, Comments(text), float(rules.settings["quoted_weight"])) if hits else []
        for hit, weight in zip(hits, weights):
            tally.add(hit.rule.id, weight, "patterns", unit, unit.folded.to_original(hit.start, hit.end))
        run = repeated_run(text, int(rules.settings["repetition_word_run"]),
                           int(rules.settings["repetition_phrase_run"]), words.tokens)
        if run is not None:
            rule = rules.by_id("repetition.word")
            tally.add(rule.id, rule.weight, "patterns", unit, unit.folded.to_original(*run))
    if policy.structure != "off":
        original = unit.folded.original
        signals = json_signals(original, rules)
        if not unit.folded.plain:
            signals = unicode_signals(original, rules) + signals
        for sig in signals:
            tally.add(sig.rule_id, sig.weight, "structure", unit, (sig.start, sig.end))


def _behaviour(units: list[_Unit], tenant: str, history: History, tally: _Tally, rules: RuleSet) -> None:
    s = rules.settings
    last = units[-1].message
    current = [u for u in units if u.message == last]
    head = current[0]
    window = history.window(tenant)
    if window:
        for hit, end in _spanning_hits(window, head, int(s["fragment_head_chars"]), rules):
            if hit.rule.id in tally.fired:
                continue  # already caught on this request alone
            tally.add("behaviour.fragmented", hit.rule.weight, "behaviour", head,
                      head.folded.to_original(0, end))
            tally.fired.setdefault(hit.rule.id, (0.0, "behaviour"))
    text = "\x00".join(u.folded.original for u in current)
    folded = " ".join(u.folded.text for u in current)
    repeats = history.record(tenant, hash(text), folded)
    if repeats >= int(s["repeat_threshold"]):
        rule = rules.by_id("behaviour.repeated_prompt")
        tally.add(rule.id, rule.weight, "behaviour", head, (0, len(head.folded.original)))


_DEFAULT_HISTORY: History | None = None


def default_history() -> History:
    """The process-wide history used when a caller passes none (sized from behaviour.toml)."""
    global _DEFAULT_HISTORY
    if _DEFAULT_HISTORY is None:
        s = default_rules().settings
        _DEFAULT_HISTORY = History(int(s["max_tenants"]), int(s["history_prompts"]),
                                   int(s["history_tail_chars"]))
    return _DEFAULT_HISTORY


def check(messages: Sequence[dict], tenant: str | None = None, policy: Policy | None = None,
          history: History | None = None, rules: RuleSet | None = None) -> Verdict:
    """Analyse a chat request; `tenant` enables the behavioural layer (no history without one)."""
    policy = policy or DEFAULT_POLICY
    rules = rules or default_rules()
    tally = _Tally(policy)
    units = list(_units(messages))
    if not units:
        return tally.verdict()
    for unit in units:
        _scan_unit(unit, tally, rules)
    if policy.patterns != "off":
        # An attack split over adjacent messages (or parts) of one request.
        head_chars = int(rules.settings["fragment_head_chars"])
        for prev, unit in zip(units, units[1:]):
            if unit.message - prev.message > 1:
                continue
            tail = prev.folded.text[-int(rules.settings["history_tail_chars"]):]
            for hit, end in _spanning_hits(tail, unit, head_chars, rules):
                if hit.rule.id not in tally.fired:
                    tally.add(hit.rule.id, hit.rule.weight, "patterns", unit, unit.folded.to_original(0, end))
    if tenant is not None and policy.behaviour != "off":
        _behaviour(units, tenant, history if history is not None else default_history(), tally, rules)
    return tally.verdict()


def check_text(text: str, tenant: str | None = None, policy: Policy | None = None,
               history: History | None = None, rules: RuleSet | None = None) -> Verdict:
    """Analyse a completions-API prompt string (treated as one user message)."""
    return check([{"role": "user", "content": text}], tenant, policy, history, rules)
