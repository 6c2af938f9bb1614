"""Evaluate the prompt security layer on the development corpus (issue 5).

    .venv/bin/python -m bench.security.evaluate [--corpus DIR] [--rounds N]

Prints detection rate (attacks) and false-positive rate (benign) per language and per category,
the ids missed and wrongly flagged, fragmented-vs-unsplit detection, and latency p50/p99 for the
corpus prompts, 4 KB prompts, 100 KB adversarial inputs and the behavioural layer alone.
"Detected" means the verdict is flag or block; blocks are counted apart.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import security
from bench.security.adversarial import adversarial_inputs

CORPUS = Path(__file__).with_name("corpus")


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _verdict(record: dict) -> security.Verdict:
    if "messages" in record:
        return security.check(record["messages"])
    return security.check_text(record["text"])


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {100.0 * hits / total:5.1f}%" if total else "-"


def _table(title: str, rows: dict[tuple[str, str], list[tuple[str, str]]], positive: bool) -> list[str]:
    """rows: (lang, category) -> [(id, action)]; positive: attacks (rate = detected)."""
    out = [title]
    by_lang: dict[str, list[tuple[str, str]]] = defaultdict(list)
    by_cat: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (lang, cat), items in sorted(rows.items()):
        by_lang[lang] += items
        by_cat[cat] += items
    word = "detected" if positive else "flagged"
    for label, groups in (("language", by_lang), ("category", by_cat)):
        for key, items in sorted(groups.items()):
            n = sum(a != "allow" for _, a in items)
            blocks = sum(a == "block" for _, a in items)
            out.append(f"  {label:8s} {key:18s} {word} {_rate(n, len(items))}  (blocked {blocks})")
    return out


def evaluate_corpus(corpus: Path) -> tuple[list[str], dict[str, float]]:
    lines: list[str] = []
    attacks: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    benign: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    missed: list[str] = []
    wrong: list[str] = []
    for name in ("attacks.jsonl", "benign.jsonl", "multiturn.jsonl"):
        for rec in load(corpus / name):
            action = _verdict(rec).action
            table = attacks if rec["label"] == "attack" else benign
            table[(rec["lang"], rec["category"])].append((rec["id"], action))
            if rec["label"] == "attack" and action == "allow":
                missed.append(rec["id"])
            if rec["label"] == "benign" and action != "allow":
                wrong.append(f"{rec['id']}({action})")
    lines += _table("Attacks (detection = flag or block)", attacks, True)
    lines += _table("Benign (false positives = flag or block)", benign, False)
    lines.append(f"Missed attacks ({len(missed)}): {' '.join(missed) or '-'}")
    lines.append(f"Wrongly flagged benign ({len(wrong)}): {' '.join(wrong) or '-'}")
    frag_lines, ratio = evaluate_fragments(corpus / "fragments.jsonl")
    lines += frag_lines
    total_b = sum(len(v) for v in benign.values())
    return lines, {"fp": len(wrong) / max(1, total_b), "fragment_ratio": ratio}


def evaluate_fragments(path: Path) -> tuple[list[str], float]:
    split_hits = whole_hits = 0
    missed: list[str] = []
    records = load(path)
    for rec in records:
        history = security.History()
        actions = [security.check_text(p, tenant="eval", history=history).action for p in rec["parts"]]
        if any(a != "allow" for a in actions):
            split_hits += 1
        else:
            missed.append(rec["id"])
        if security.check_text(" ".join(rec["parts"])).action != "allow":
            whole_hits += 1
    ratio = split_hits / whole_hits if whole_hits else 0.0
    return [
        f"Fragmented over requests: detected {_rate(split_hits, len(records))}; unsplit form "
        f"{_rate(whole_hits, len(records))}; ratio {ratio:.2f} (goal >= 0.80)",
        f"Fragments missed ({len(missed)}): {' '.join(missed) or '-'}",
    ], ratio


def _percentiles(fn: Callable[[], object], rounds: int) -> tuple[float, float, float, float]:
    """(p50, p99) wall and (p50, p99) CPU, in ms."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    wall.sort()
    cpu.sort()

    def p(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3

    return p(wall, 0.5), p(wall, 0.99), p(cpu, 0.5), p(cpu, 0.99)


def _fmt(name: str, stats: tuple[float, float, float, float], goal: str) -> str:
    return (f"  {name:28s} wall p50 {stats[0]:7.3f} p99 {stats[1]:7.3f} ms | "
            f"cpu p50 {stats[2]:7.3f} p99 {stats[3]:7.3f} ms  {goal}")


def latency(corpus: Path, rounds: int) -> list[str]:
    security.warm()
    lines = ["Latency"]
    texts = [r["text"] for r in load(corpus / "benign.jsonl") + load(corpus / "attacks.jsonl")]
    it = iter(texts * (rounds // len(texts) + 2))
    lines.append(_fmt("corpus prompts (one each)", _percentiles(lambda: security.check_text(next(it)), rounds), ""))
    # Two 4 KB prompts per language: everyday requests (templated benign, few rule triggers) and
    # a stress case (hand-written traps and attacks back to back: dense triggers, many matches).
    plain: dict[str, str] = defaultdict(str)
    dense: dict[str, str] = defaultdict(str)
    for r in load(corpus / "benign.jsonl") + load(corpus / "attacks.jsonl"):
        target = plain if r["category"] == "templated" else dense
        if len(target[r["lang"]]) < 4096:
            target[r["lang"]] += r["text"] + "\n"
    for label, texts in (("everyday", plain), ("traps+attacks", dense)):
        for lang, text in sorted(texts.items()):
            four_kb = (text * 2)[:4096]
            lines.append(_fmt(f"4 KB {lang} {label}", _percentiles(lambda t=four_kb: security.check_text(t), rounds),
                              "goal p99 <= 0.5 ms"))
    worst = (0.0, 0.0, 0.0, 0.0)
    worst_name = ""
    for name, text in adversarial_inputs().items():
        stats = _percentiles(lambda t=text: security.check_text(t), max(5, rounds // 100))
        if stats[3] > worst[3]:
            worst, worst_name = stats, name
        lines.append(_fmt(f"100 KB {name}", stats, ""))
    lines.append(_fmt(f"100 KB worst ({worst_name})", worst, "goal p99 <= 20 ms"))
    history = security.History()
    only = security.Policy(structure="off", patterns="off", behaviour="on")
    prompts = iter([t for t in texts if len(t) < 2000] * (rounds // len(texts) + 2))
    lines.append(_fmt("behaviour layer only",
                      _percentiles(lambda: security.check_text(next(prompts), tenant="bench", policy=only,
                                                              history=history), rounds),
                      "goal p99 <= 0.2 ms"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--rounds", type=int, default=2000, help="timed calls per latency line")
    args = parser.parse_args(argv)
    print(f"rules: {security.rules_version()}")
    lines, _ = evaluate_corpus(args.corpus)
    print("\n".join(lines))
    print("\n".join(latency(args.corpus, args.rounds)))


if __name__ == "__main__":
    main()
