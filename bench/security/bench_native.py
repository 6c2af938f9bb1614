"""security._native's two kernels against their Python references, on the 4 KB lines of
evaluate.py (everyday and trap-dense, four languages).

    .venv/bin/python -m bench.security.bench_native [--rounds N]

Prints, per line, the median microseconds of: the literal automaton (LiteralSet.find) against
one `str.find` pass per literal (find_reference), and the fold table (Folded.of) against the
whole-string C passes it was taught from (_fold_whole, the fold before the table).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

import security
from bench.security.evaluate import CORPUS, load
from security.normalize import Folded, _fold_whole
from security.patterns import _index
from security.rules import default_rules


def median_us(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def four_kb_lines() -> dict[str, str]:
    lines: dict[str, str] = defaultdict(str)
    for r in load(CORPUS / "benign.jsonl") + load(CORPUS / "attacks.jsonl"):
        label = f"{r['lang']} {'everyday' if r['category'] == 'templated' else 'traps+attacks'}"
        if len(lines[label]) < 4096:
            lines[label] += r["text"] + "\n"
    return {label: (text * 2)[:4096] for label, text in sorted(lines.items())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args(argv)
    security.warm()
    literals = _index(default_rules().pattern_rules).literals
    print(f"{len(literals.literals)} literals")
    print(f"{'4 KB line':22s} {'find':>7s} {'ref':>8s} {'ratio':>6s} | {'fold':>6s} {'whole':>6s} {'ratio':>6s}")
    for label, text in four_kb_lines().items():
        folded = Folded.of(text).text
        find = median_us(lambda: literals.find(folded), args.rounds)
        reference = median_us(lambda: literals.find_reference(folded), max(10, args.rounds // 20))
        fold = median_us(lambda: Folded.of(text), args.rounds)
        whole = median_us(lambda: _fold_whole(text), args.rounds)
        print(f"{label:22s} {find:7.1f} {reference:8.1f} {reference / find:6.1f} | {fold:6.1f} {whole:6.1f} "
              f"{whole / fold:6.1f}")


if __name__ == "__main__":
    main()
