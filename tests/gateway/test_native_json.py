"""The native lane's JSON scanner and BLAKE2b (csrc/gateway/json_fields.h, blake2b.h) against the
Python path they stand in for: RoutingFields + _prompt_text + prefix_key for requests, _usage for
answers, hashlib.blake2b and _rendezvous for hashes. Where the scanner says supported it must read
exactly what the Python path reads; where it cannot, it says None and the Python path answers."""
from __future__ import annotations

import hashlib
import json
import random
import types
from typing import Any

import msgspec
import pytest

from gateway.fleet.balancer import _rendezvous, prefix_key
from gateway.fleet.proxy import _prompt_text, _usage
from gateway.fleet.wire import RoutingFields

native = pytest.importorskip("gateway._native", reason="the native module is not built")

_ROUTING = msgspec.json.Decoder(RoutingFields)


def python_fields(body: bytes, min_chars: int) -> dict[str, Any] | None:
    """What the Python path reads from body, in scan_request's shape; None where it refuses it."""
    try:
        fields = _ROUTING.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    text = _prompt_text(fields)
    return {
        "model": fields.model,
        "stream": fields.stream is True,
        "include_usage": bool(fields.stream_options and fields.stream_options.include_usage),
        "max_tokens": fields.max_tokens,
        "max_completion_tokens": fields.max_completion_tokens,
        "n": 1 if fields.n is None else fields.n,
        "prompt_chars": len(text),
        "affinity_key": prefix_key(text[:min_chars], min_chars),
    }


def native_fields(body: bytes, min_chars: int) -> dict[str, Any] | None:
    fields = native.scan_request(body, min_chars)
    if fields is not None and fields["n"] is None:
        fields["n"] = 1  # absent or null: RoutingFields says 1 or None, and the Python path uses 1 for both
    return fields


def chat(*contents: str | None, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": c} for c in contents]
    return json.dumps({"model": "llama3.1:8b", "messages": messages, **extra}, ensure_ascii=False).encode()


UNICODE = ["Résumé du café à Noël", "你好，世界。東京タワー", "emoji 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "tab\tnew\nquote\" back\\ slash/"]

PARITY_BODIES = [
    chat("Hello there, how are you today?"),
    chat(*UNICODE),
    # The same text with every non-ASCII character \u-escaped, as json.dumps writes it by default.
    json.dumps({"model": "m", "messages": [{"role": "user", "content": u} for u in UNICODE]}).encode(),
    b'{"model":"m","messages":[{"role":"user","content":"a\\n\\"\\\\\\/\\u00e9\\ud83d\\ude00\\b\\f\\r\\t z"}]}',
    b'{"model":"m","messages":[{"role":"user","content":"\\u0000\\u001f\\uFFFF\\uD834\\uDD1E"}]}',
    b'{"model":"m","messages":[]}',
    b'{"model":"m","messages":[],"prompt":"the prompt loses to messages"}',
    b'{"model":"m","messages":[{"role":"system","content":null},{"content":""},{"content":""},{"role":null}]}',
    b'{"model":"m","messages":null,"prompt":"a completion prompt"}',
    b'{"model":"m","prompt":null}',
    b'{"model":"m"}',
    b'{"model":"m","prompt":"Once upon a time, in a land far away","max_tokens":64,"stream":false}',
    b' \t\r\n{ "model" : "m" , "stream" : true , "stream_options" : { "include_usage" : true } } \n',
    b'{"model":"m","stream":null,"stream_options":{"include_usage":null,"other":[1,{"a":2}]}}',
    b'{"model":"m","stream_options":{"include_usage":true,"include_usage":false}}',
    b'{"model":"m","stream_options":null,"max_tokens":null,"max_completion_tokens":null,"n":null}',
    b'{"model":"m","max_tokens":0,"max_completion_tokens":-0,"n":-3}',
    b'{"model":"m","max_tokens":9223372036854775807,"max_completion_tokens":-9223372036854775808,"n":2}',
    b'{"mod\\u0065l":"esc\\u0061ped key","pr\\u006fmpt":"xyz"}',
    b'{"model":"\\u6a21\\u578b \\ud83e\\udd99","prompt":"p"}',
    b'{"model":"m","messages":[{"role":"user","content":"hi","name":"bob","tool_calls":[{"id":"1"}]}]}',
    b'{"model":"m","temperature":0.7,"top_p":1e-3,"seed":-12,"stop":["\\n",null],"logit_bias":{"50256":-100},'
    b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}],'
    b'"flag":true,"none":null,"big":123456789012345678901234567890,"exp":1E+400,"neg":-0.0e-7,"prompt":"p"}',
    b'{"model":"m","skipped":"\\ud83d\\ude00 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80","prompt":"x"}',
    b'{"model":"m","x":' + b"[" * 127 + b"]" * 127 + b',"prompt":"deep but allowed"}',
    b'{"model":"m","x":1' + b"0" * 5000 + b',"prompt":"a long number"}',
]


@pytest.mark.parametrize("body", PARITY_BODIES)
def test_scan_request_reads_what_the_python_path_reads(body: bytes) -> None:
    for min_chars in (0, 1, 2, 5, 16, 512):
        expected = python_fields(body, min_chars)
        assert expected is not None
        assert native_fields(body, min_chars) == expected


@pytest.mark.parametrize("body", [chat(*UNICODE), chat("abc", None, "", "défi 😀", "z"),
                                  b'{"model":"m","prompt":"a\\u00e9\\ud83d\\ude00\\n\xe4\xbd\xa0b"}'])
def test_affinity_key_at_every_min_chars_boundary(body: bytes) -> None:
    length = len(_prompt_text(_ROUTING.decode(body)))
    for min_chars in range(0, length + 3):  # every cut: inside escapes, multibyte runs, separators
        assert native_fields(body, min_chars) == python_fields(body, min_chars), min_chars
    at_length, past_length = native_fields(body, length), native_fields(body, length + 1)
    assert at_length is not None and at_length["affinity_key"] is not None
    assert past_length is not None and past_length["affinity_key"] is None


def test_long_prompt_with_unicode_past_the_fast_path() -> None:
    rng = random.Random(7)
    words = ["lorem", "ipsum", "café", "東京", "😀", "a\"b", "c\\d", "tab\t", "x" * 40]
    text = " ".join(rng.choice(words) for _ in range(20_000))
    for body in (chat(text[:50_000], text[50_000:]), json.dumps({"model": "m", "prompt": text}).encode()):
        for min_chars in (512, 40_000, 99_999):
            assert native_fields(body, min_chars) == python_fields(body, min_chars)


UNSUPPORTED_BODIES = {
    "empty": b"",
    "invalid json": b'{"model":"m",}',
    "single quotes": b"{'model':'m'}",
    "trailing garbage": b'{"model":"m"} x',
    "two values": b'{"model":"m"}{}',
    "byte order mark": b'\xef\xbb\xbf{"model":"m"}',
    "not an object": b'["model","m"]',
    "a string": b'"model"',
    "duplicate top-level key": b'{"model":"m","max_tokens":1,"max_tokens":2}',
    "duplicate unread key": b'{"model":"m","temperature":1,"temperature":0}',
    "duplicate key, escaped": b'{"model":"a","mod\\u0065l":"b"}',
    "model missing": b'{"prompt":"p"}',
    "model not a string": b'{"model":7}',
    "model null": b'{"model":null}',
    "max_tokens float": b'{"model":"m","max_tokens":1.0}',
    "max_tokens exponent": b'{"model":"m","max_tokens":1e2}',
    "max_tokens string": b'{"model":"m","max_tokens":"5"}',
    "max_tokens bool": b'{"model":"m","max_tokens":true}',
    "max_tokens 2**64": b'{"model":"m","max_tokens":18446744073709551616}',
    "max_tokens 2**63": b'{"model":"m","max_tokens":9223372036854775808}',
    "max_tokens below int64": b'{"model":"m","max_tokens":-9223372036854775809}',
    "max_tokens leading zero": b'{"model":"m","max_tokens":05}',
    "n bool": b'{"model":"m","n":false}',
    "n float": b'{"model":"m","n":2.5}',
    "max_completion_tokens list": b'{"model":"m","max_completion_tokens":[1]}',
    "stream int": b'{"model":"m","stream":1}',
    "stream string": b'{"model":"m","stream":"true"}',
    "stream_options string": b'{"model":"m","stream_options":"x"}',
    "include_usage int": b'{"model":"m","stream_options":{"include_usage":1}}',
    "content parts": b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}',
    "content number": b'{"model":"m","messages":[{"content":5}]}',
    "content twice": b'{"model":"m","messages":[{"content":"a","content":"b"}]}',
    "role number": b'{"model":"m","messages":[{"role":1,"content":"a"}]}',
    "message not an object": b'{"model":"m","messages":["hi"]}',
    "messages an object": b'{"model":"m","messages":{"content":"hi"}}',
    "prompt token ids": b'{"model":"m","prompt":[1,2,3]}',
    "prompt strings": b'{"model":"m","prompt":["a","b"]}',
    "prompt number": b'{"model":"m","prompt":5}',
    "lone high surrogate": b'{"model":"m","prompt":"a\\ud83d"}',
    "lone low surrogate": b'{"model":"m","prompt":"\\ude00a"}',
    "high surrogate then a letter": b'{"model":"m","prompt":"\\ud83d\\u0041"}',
    "lone surrogate in a skipped string": b'{"model":"m","x":"\\udfff"}',
    "invalid utf-8": b'{"model":"m","prompt":"\xff"}',
    "overlong utf-8": b'{"model":"m","prompt":"\xc0\xaf"}',
    "utf-8 surrogate": b'{"model":"m","x":"\xed\xa0\x80"}',
    "truncated utf-8": b'{"model":"m","prompt":"\xe4\xbd"}',
    "raw control byte": b'{"model":"m","prompt":"a\nb"}',
    "bad escape": b'{"model":"m","prompt":"\\x41"}',
    "short unicode escape": b'{"model":"m","prompt":"\\u12"}',
    "unterminated string": b'{"model":"m","prompt":"abc',
    "bad number": b'{"model":"m","x":-}',
    "bad fraction": b'{"model":"m","x":1.}',
    "bad exponent": b'{"model":"m","x":1e+}',
    "nan": b'{"model":"m","x":NaN}',
    "misspelled literal": b'{"model":"m","x":nul}',
    "depth 129": b'{"model":"m","x":' + b"[" * 128 + b"]" * 128 + b"}",
    "depth bomb": b"[" * 10_000,
    "depth bomb in a field": b'{"model":"m","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "too many top-level keys": b'{"model":"m",' + b",".join(b'"k%d":0' % i for i in range(64)) + b"}",
}


@pytest.mark.parametrize("name", UNSUPPORTED_BODIES)
def test_scan_request_leaves_what_it_cannot_read_exactly_to_python(name: str) -> None:
    assert native.scan_request(UNSUPPORTED_BODIES[name], 16) is None


VALID_UTF8 = [b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf",
              b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80"]
INVALID_UTF8 = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
                b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                b"\xff", b"\xc3", b"\xe4\xbd", b"\xf0\x9f\x98", b"\xc3\xc3\xa9", b"\xe4\xbd\xa0\xa0"]


@pytest.mark.parametrize("offset", range(0, 34))
def test_utf8_is_checked_at_every_offset_from_the_block_and_the_end(offset: int) -> None:
    """Each sequence lands at every position in a 16-byte block, and near the end of the body."""
    for sequence in VALID_UTF8:
        for text in (b"a" * offset + sequence, b"a" * offset + sequence + b"z" * (33 - offset)):
            for body in (b'{"model":"m","prompt":"' + text + b'"}', b'{"model":"m","x":"' + text + b'"}',
                         b'{"model":"m","' + text + b'":1}'):
                assert native_fields(body, offset) == python_fields(body, offset) is not None, body
    for sequence in INVALID_UTF8:
        for text in (b"a" * offset + sequence, b"a" * offset + sequence + b"z" * (33 - offset)):
            for body in (b'{"model":"m","prompt":"' + text + b'"}', b'{"model":"m","x":"' + text + b'"}',
                         b'{"model":"m","' + text + b'":1}', b'{"model":"m","x":"' + text):
                assert native.scan_request(body, 16) is None, body


def test_negative_min_chars_is_unsupported() -> None:
    assert native.scan_request(b'{"model":"m"}', -1) is None


def _mutate(body: bytes, rng: random.Random) -> bytes:
    interesting = b'"\\{}[],:0-e.n \x00\x7f\xc3\xa9\xff\xed\xf0'
    data = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0:
            del data[where:]
        elif kind == 1 and where < len(data):
            data[where] = rng.randrange(256)
        elif kind == 2:
            data.insert(where, rng.choice(interesting))
        elif kind == 3 and where < len(data):
            del data[where]
        else:
            data[where:where] = data[rng.randrange(len(data) + 1):][:rng.randint(1, 8)]
    return bytes(data)


def test_fuzzed_bodies_never_disagree_with_the_python_path() -> None:
    rng = random.Random(20261127)
    supported = 0
    for i in range(4000):
        body = _mutate(rng.choice(PARITY_BODIES[:24]), rng)
        min_chars = rng.choice((0, 3, 16))
        fields = native_fields(body, min_chars)
        if fields is not None:
            supported += 1
            assert fields == python_fields(body, min_chars), (i, body)
    assert supported > 400  # the mutations still reach the field-reading paths


@pytest.mark.parametrize("size", range(0, 301))
def test_blake2b_equals_hashlib(size: int) -> None:
    data = random.Random(size).randbytes(size)
    for digest_size in (1, 8, 16, 32, 64):
        assert native.blake2b(data, digest_size) == hashlib.blake2b(data, digest_size=digest_size).digest()


def test_rendezvous_score_equals_the_balancer() -> None:
    key = hashlib.blake2b(b"a shared prefix", digest_size=16).digest()
    for name in ("http://10.0.0.11:9000", "http://h\u00f4te:1", ""):
        host = types.SimpleNamespace(name=name)
        assert native.rendezvous_score(key, name.encode()) == _rendezvous(key, host)  # type: ignore[arg-type]


def python_usage(body: bytes) -> dict[str, int] | None:
    usage = _usage(body)
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.cached_tokens,
            "completion_tokens": usage.completion_tokens, "reasoning_tokens": usage.reasoning_tokens}


USAGE_BODIES = [
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hi \\u00e9"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
    b'"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":8},'
    b'"completion_tokens_details":{"reasoning_tokens":3}}}',
    b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16}}',
    b'{"usage":{"prompt_tokens":1,"prompt_tokens_details":null,"completion_tokens_details":null,"extra":[{}]}}',
    b'{"usage":{"prompt_tokens":1,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":1},'
    b'"prompt_tokens_details":{}}}',
    b'{"usage":{"prompt_tokens":4},"usage":{"completion_tokens":6}}',
    b'{"usage":{}}',
    b'{"usage":{"prompt_tokens":5},"usage":null}',
    b'{"usage":null}',
    b'{"id":"x","choices":[{"text":"no usage"}]}',
    b'{"usage":{"prompt_tokens":null}}',
    b'{"usage":{"prompt_tokens":1.0}}',
    b'{"usage":{"prompt_tokens_details":{"cached_tokens":null}}}',
    b'{"usage":{"completion_tokens":true}}',
    b'{"usage":[]}',
    b'{"choices":null,"usage":{"prompt_tokens":1}}',
    b'{"choices":{},"usage":{"prompt_tokens":1}}',
    b'{"usage":{"prompt_tokens":1}} trailing',
    b'{"usage":{"prompt_tokens":1}',
    b"[]", b'"usage"', b"1", b"null", b"", b"not json",
]


@pytest.mark.parametrize("body", USAGE_BODIES)
def test_scan_usage_reads_what_the_python_path_reads(body: bytes) -> None:
    assert native.scan_usage(body) == python_usage(body)


def test_scan_usage_exact_counts() -> None:
    assert native.scan_usage(USAGE_BODIES[0]) == {"prompt_tokens": 12, "cached_tokens": 8,
                                                  "completion_tokens": 5, "reasoning_tokens": 3}


def test_fuzzed_usage_bodies_never_disagree_with_the_python_path() -> None:
    rng = random.Random(5)
    for i in range(2000):
        body = _mutate(rng.choice(USAGE_BODIES[:7]), rng)
        counts = native.scan_usage(body)
        if counts is not None:
            assert counts == python_usage(body), (i, body)
