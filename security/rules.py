"""Load the versioned rule files and compile them once.

A pattern rule is a regex over folded text (see normalize.py). Its source may name lexicon lists,
`<<list_name>>`, expanded to an alternation of the folded, escaped phrases, and gap macros:
`<<gapN>>` = up to N words then a separator (Latin scripts), `<<cjkN>>` = up to N characters inside
one sentence (Chinese, Japanese). Every quantifier the macros emit is bounded or possessive, so no
rule can backtrack catastrophically; tests fuzz that.

`triggers` is a cheap prefilter: plain ASCII words are looked up in the set of words of the text,
other strings by substring; a rule runs only when one is present. "@list" means every phrase of a
lexicon list (its longest word, which any match must contain).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from security.anchor import Anchored, anchor
from security.normalize import fold
from security.triggers import Trigger

RULES_DIR = Path(__file__).with_name("rules")
_MACRO = re.compile(r"<<(\w+)>>")
_ASCII_WORD = re.compile(r"[a-z]+\Z")
_LAYERS = ("structure", "patterns", "behaviour")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    layer: str
    category: str
    lang: str
    weight: float
    regex: re.Pattern[str] | None
    trigger: Trigger  # a prefilter: the regex runs only when one of these is in the text
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    description: str
    weight_many: float = 0.0  # structure rules: weight once `many` occurrences are seen
    many: int = 0
    # The same regex split for speed: alternatives that open with a lexicon list become one regex
    # per leading literal (so the regex engine can skip to that literal), run only when the
    # literal is in the text; `generic` holds the other alternatives.
    anchored: tuple[Anchored, ...] = ()
    generic: re.Pattern[str] | None = None
    # Further prefilters that must all hold (e.g. an instruction noun for an override rule);
    # in the file, one list of words or a list of such lists.
    requires: tuple[Trigger, ...] = ()
    # Only matches that open a sentence count (imperatives: "Ignore the instructions.").
    sentence_start: bool = False

    def triggered(self, words: set[str], phrases: set[str]) -> bool:
        """Whether a trigger is present and every `requires` group too; `words`: the text's a-z
        words; `phrases`: the rules' phrases that occur in it (literals.py)."""
        if not self.trigger.present(words, phrases):
            return False
        for group in self.requires:
            if not group.present(words, phrases):
                return False
        return True

    @property
    def phrases(self) -> frozenset[str]:
        """Every phrase its triggers search for (not the words looked up in the word set)."""
        return self.trigger.phrases.union(*(t.phrases for t in self.requires))


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]
    settings: dict[str, object]
    # Derived in __post_init__: rules by id, and the rules that carry a regex.
    _by_id: dict[str, Rule] = field(init=False, repr=False)
    pattern_rules: tuple[Rule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {r.id: r for r in self.rules})
        object.__setattr__(self, "pattern_rules", tuple(r for r in self.rules if r.regex is not None))

    def by_id(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]


def _phrase(p: str) -> str:
    folded = fold(p).strip()
    return r"\W++".join(re.escape(w) for w in folded.split())


def _alternation(phrases: list[str]) -> str:
    parts = sorted({_phrase(p) for p in phrases}, key=len, reverse=True)
    return "(?:" + "|".join(parts) + ")"


def _expand(source: str, lexicon: dict[str, list[str]]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("gap") and name[3:].isdigit():
            return r"(?:\W++\w++){0,%d}?\W++" % int(name[3:])
        if name.startswith("cjk") and name[3:].isdigit():
            return r"[^。\n]{0,%d}?" % int(name[3:])
        if name not in lexicon:
            raise ValueError(f"unknown lexicon list <<{name}>>")
        return _alternation(lexicon[name])

    # Literal non-ASCII text in a pattern is folded like prompts ("モード" -> "モート"); ASCII is
    # regex syntax and stays as written.
    source = "".join(c if c.isascii() else fold(c) for c in source)
    return _MACRO.sub(sub, source)


def _triggers(spec: list[str], lexicon: dict[str, list[str]]) -> Trigger:
    words: set[str] = set()
    subs: set[str] = set()
    for item in spec:
        phrases = lexicon[item[1:]] if item.startswith("@") else [item]
        for p in phrases:
            f = fold(p).strip()
            if f.isascii():
                longest = max(re.findall(r"[a-z]+", f) or [f], key=len)
                if _ASCII_WORD.match(longest):
                    words.add(longest)
                else:
                    subs.add(f)
            else:
                subs.add(f)
    return Trigger.of(frozenset(words), frozenset(subs))


def _requires(spec: list, lexicon: dict[str, list[str]]) -> tuple[Trigger, ...]:
    if not spec:
        return ()
    groups = spec if isinstance(spec[0], list) else [spec]
    return tuple(_triggers(list(g), lexicon) for g in groups)


def _compile_rule(raw: dict, lexicon: dict[str, list[str]], layer: str) -> Rule:
    source = raw.get("pattern")
    regex = re.compile(_expand(source, lexicon)) if source else None
    anchored, generic = anchor(regex.pattern) if regex is not None else ([], None)
    rule_layer = raw.get("layer", layer)
    if rule_layer not in _LAYERS:
        raise ValueError(f"rule {raw['id']}: unknown layer {rule_layer}")
    return Rule(
        id=raw["id"], layer=rule_layer, category=raw["category"], lang=raw.get("lang", "any"),
        weight=float(raw["weight"]), regex=regex, trigger=_triggers(list(raw.get("triggers", [])), lexicon),
        positive=tuple(raw.get("positive", ())), negative=tuple(raw.get("negative", ())),
        description=raw.get("description", ""),
        weight_many=float(raw.get("weight_many", raw["weight"])), many=int(raw.get("many", 0)),
        anchored=tuple(anchored),
        generic=re.compile(generic) if generic else None,
        requires=_requires(raw.get("requires", []), lexicon),
        sentence_start=bool(raw.get("sentence_start", False)),
    )


def load_file(path: Path) -> tuple[str, list[Rule], dict[str, object]]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    lexicon = {k: list(v) for k, v in data.get("lexicon", {}).items()}
    layer = data.get("layer", "patterns")
    rules = [_compile_rule(r, lexicon, layer) for r in data.get("rule", [])]
    return str(data["version"]), rules, dict(data.get("settings", {}))


@cache
def default_rules() -> RuleSet:
    """All rule files of security/rules/, compiled once per process."""
    versions: list[str] = []
    rules: list[Rule] = []
    settings: dict[str, object] = {}
    for path in sorted(RULES_DIR.glob("*.toml")):
        version, file_rules, file_settings = load_file(path)
        versions.append(f"{path.stem}@{version}")
        rules.extend(file_rules)
        settings.update(file_settings)
    ids = [r.id for r in rules]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate rule ids: {sorted(duplicates)}")
    return RuleSet(version=",".join(versions), rules=tuple(rules), settings=settings)
