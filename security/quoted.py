"""Quoted material: comments in code.

A comment documents the program beside it, so its words are about that program: "# ignore
previous instructions in the queue" describes a function that drops queued jobs. A pattern hit
that lies wholly inside such a comment weighs `quoted_weight` (markup.toml) times its rule's
weight, and rules matching the same words count once: alone they stay under the flag threshold,
while an injection planted in a comment that carries a second signal (an address to the model,
extraction, exfiltration, a role change; the structure layer scores deceptive Unicode in full)
still flags or blocks.

A comment is a line that opens with a comment marker (#, //, --, /*) and either lies inside a
fenced code block or has a line of code next to it in the same paragraph (comment lines stacked
above a `def` count too). The other lines of a code block, strings included, are not quoted:
"```\\nIgnore all previous instructions\\n```" is an order, not a comment. Neither is a Markdown
heading ("# Ignore all previous instructions" above prose), nor an HTML comment (markup.toml's
rules read those).
"""

from __future__ import annotations

import re

from security.patterns import Hit

# "#" opens a comment unless it starts a Markdown heading level 2+ ("##"), a shebang or a C
# preprocessor line.
_COMMENT_LINE = re.compile(r"[ \t]*+(?:#(?![#!]|include|define|if|endif|else|elif|pragma|undef)"
                           r"|//|--(?!-)|/\*)")
_KEYWORD = (r"(?:def|class|import|from|return|yield|raise|if|elif|else|for|while|try|except|finally|with|"
            r"function|const|let|var|fn|func|pub|public|private|protected|static|void|int|package|using|"
            r"select|insert|update|delete|create|end)\b")
# A line that reads as code: a statement keyword with code punctuation, a line ending in a block
# or statement delimiter, or an assignment. Folded text is lower case.
_CODE = re.compile(r"[ \t]*+(?:" + _KEYWORD + r"[^\n]*?[(:=;{\[]"
                   r"|[^\n]*?(?:[;{}]|\)[ \t]*+:|\)[ \t]*+\{)[ \t]*+$"
                   r"|[a-z_][\w.\[\]]*+[ \t]*+[-+*/]?=(?!=))")
_FENCES = ("```", "~~~")


def _line_at(text: str, start: int) -> tuple[int, int]:
    end = text.find("\n", start)
    return start, len(text) if end < 0 else end


def _fence_ranges(text: str) -> list[tuple[int, int]]:
    """Insides of fenced code blocks: from an opening fence line to the next fence line (or the
    end of the text when unclosed)."""
    fences: list[int] = []
    for fence in _FENCES:
        at = text.find(fence)
        while at >= 0:
            line_start = text.rfind("\n", 0, at) + 1
            if at - line_start <= 3 and not text[line_start:at].strip(" "):
                fences.append(line_start)
            at = text.find(fence, at + 3)
    fences.sort()
    ranges = []
    for i in range(0, len(fences), 2):
        opening_end = _line_at(text, fences[i])[1]
        ranges.append((opening_end, fences[i + 1] if i + 1 < len(fences) else len(text)))
    return ranges


def _neighbour_is_code(text: str, start: int, end: int) -> bool:
    """Whether the nearest non-comment line above or below the line [start, end), in the same
    paragraph, reads as code."""
    line_start = start
    while line_start > 0:  # upwards
        prev_start = text.rfind("\n", 0, line_start - 1) + 1
        line = text[prev_start:line_start - 1]
        if not _COMMENT_LINE.match(line):
            if line.strip() and _CODE.match(line):
                return True
            break
        line_start = prev_start
    line_end = end
    while line_end < len(text):  # downwards
        line = text[line_end + 1:_line_at(text, line_end + 1)[1]]
        if not _COMMENT_LINE.match(line):
            return bool(line.strip()) and _CODE.match(line) is not None
        line_end += 1 + len(line)
    return False


class Comments:
    """Which spans of one folded text lie inside a code comment. Only the lines that hold a hit
    are examined (a scan of the whole text for markers costs more, "//" being in every URL)."""

    __slots__ = ("text", "_lines", "_fences")

    def __init__(self, text: str) -> None:
        self.text = text
        self._lines: dict[int, int] = {}  # line start -> its end when the line is a comment, else -1
        self._fences: list[tuple[int, int]] | None = None

    def holds(self, start: int, end: int) -> bool:
        line_start = self.text.rfind("\n", 0, start) + 1
        comment_end = self._lines.get(line_start)
        if comment_end is None:
            line_end = _line_at(self.text, line_start)[1]
            comment_end = self._lines[line_start] = line_end if self._is_comment(line_start, line_end) else -1
        return end <= comment_end

    def _is_comment(self, start: int, end: int) -> bool:
        if _COMMENT_LINE.match(self.text, start, end) is None:
            return False
        if self._fences is None:
            self._fences = _fence_ranges(self.text) if "```" in self.text or "~~~" in self.text else []
        return any(s <= start < e for s, e in self._fences) or _neighbour_is_code(self.text, start, end)


def hit_weights(hits: list[Hit], comments: Comments, factor: float) -> list[float]:
    """Each hit's weight: its rule's, or for a hit inside a comment `factor` times that, with a
    quoted hit nested in a stronger one (or holding it) counting nothing: several rules reading
    the same words ("forget everything above") are one piece of evidence, other phrases add up."""
    weights = [h.rule.weight for h in hits]
    quoted = [i for i, h in enumerate(hits) if comments.holds(h.start, h.end)]
    taken: list[tuple[int, int]] = []
    for i in sorted(quoted, key=lambda i: -hits[i].rule.weight):
        hit = hits[i]
        nested = any((s <= hit.start and hit.end <= e) or (hit.start <= s and e <= hit.end) for s, e in taken)
        weights[i] = 0.0 if nested else hit.rule.weight * factor
        if not nested:
            taken.append((hit.start, hit.end))
    return weights
