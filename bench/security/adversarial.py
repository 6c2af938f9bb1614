"""100 KB adversarial inputs for the latency goal: floods of rule anchors and near-misses that
make a backtracking scanner work at every position, deceptive Unicode, broken JSON, random code
points. Deterministic (seeded) so runs compare."""

from __future__ import annotations

import random

SIZE = 100_000


def _fill(unit: str, size: int = SIZE) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def adversarial_inputs() -> dict[str, str]:
    rng = random.Random(1)
    return {
        "ignore flood": _fill("ignore "),
        "ignore near-miss gaps": _fill("ignore the a b c d e instructions "),
        "you-are-now flood": _fill("you are now "),
        "send-password near-miss": _fill("send the password "),
        "html comment opens": _fill("<!--"),
        "hidden div opens": _fill('<div style="display:none">'),
        "markdown image opens": _fill("![a](https://x.example/?"),
        "word repetition": _fill("aa aa aa aa aa aa aa aa aa aa aa aa aa aa aa b "),
        "one long word": _fill("x"),
        "zero-width in words": _fill("a\u200bb"),
        "mixed scripts": _fill("\u0430a"),
        "broken json": "{" + _fill('"a": "b", ', SIZE - 1),
        "chinese verb flood": _fill("发送"),
        "chinese ignore flood": _fill("忽略"),
        "japanese noun flood": _fill("指示を"),
        "random code points": "".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(SIZE)),
    }
