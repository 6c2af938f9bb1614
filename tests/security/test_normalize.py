"""Folding: one canonical form for look-alike, invisible, full-width and accented text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from security.normalize import Folded, fold, fold_char


def test_fold_maps_deceptive_forms_to_plain_text() -> None:
    assert fold("IGNORE Previous") == "ignore previous"
    assert fold("ｉｇｎｏｒｅ") == "ignore"  # full-width
    assert fold("𝐢𝐠𝐧𝐨𝐫𝐞") == "ignore"  # mathematical bold
    assert fold("іgnоre") == "ignore"  # Cyrillic і and о
    assert fold("sуstème") == "systeme"  # Cyrillic у, accent dropped
    assert fold("ig\u200bno\u2060re\ufeff") == "ignore"  # zero-width characters
    assert fold("i\u0336g\u0336n\u0336") == "ign"  # strike-through combining marks
    assert fold("hi\U000e0069\U000e0067") == "hiig"  # tag characters surface their ASCII
    assert fold("ｼｽﾃﾑ") == fold("システム")  # half-width katakana


def test_fold_keeps_ordinary_cjk_and_french_readable() -> None:
    assert fold("忽略之前的指令") == "忽略之前的指令"
    assert fold("Règles précédentes\u00a0!") == "regles precedentes !"
    assert fold("你好，世界！") == "你好,世界!"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_whole_string_fold_equals_per_character_fold(text: str) -> None:
    # The fast path (whole-string passes) and the offset map (per character) must agree.
    assert fold(text) == "".join(fold_char(c) for c in text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.data())
def test_spans_map_back_inside_the_original(text: str, data: st.DataObject) -> None:
    f = Folded.of(text)
    start = data.draw(st.integers(0, len(f.text)))
    end = data.draw(st.integers(start, len(f.text)))
    o_start, o_end = f.to_original(start, end)
    assert 0 <= o_start <= o_end <= len(text)
    if start < end:
        assert f.text[start:end] in fold(text[o_start:o_end])


def test_span_of_a_word_after_invisible_characters() -> None:
    f = Folded.of("a\u200b\u200bbc ignore")
    start = f.text.index("ignore")
    assert f.to_original(start, start + 6) == (6, 12)
