"""Tokenizer parity with transformers on SmolLM2's GGUF, chat templates, and the error paths."""
from __future__ import annotations

import json
import random
from pathlib import Path

import gguf
import pytest

from engine.chat_template import ChatTemplateError, render_chat_template
from engine.gguf_vocab import PRE_TYPES
from engine.loader.gguf_metadata import read_gguf_metadata
from engine.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's, they're, we'll, I'd.",
    "Café à l'école : naïve façade, «déjà vu», œuvre, Ça coûte 12,50 €.",
    "我爱北京天安门。自然语言处理很有趣！",
    "日本語のテキストです。カタカナとひらがな、漢字。",
    "emoji 😀👍🏽🇫🇷 family 👨‍👩‍👧 done",
    "def f(x):\n    return x * 12345 + 0.5  # 2024-01-01\n",
    "   lots   of    spaces   and\ttabs\t\t",
    "\n\n\nnewlines\r\n\r\nend\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
    "1234567890 3.14159 -42 1e10",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Bonjour, ça va ?"},
        {"role": "assistant", "content": "Oui, très bien 😀"},
        {"role": "user", "content": "日本語で答えて"},
    ],
]


@pytest.fixture(scope="module")
def gguf_path(smollm2_gguf: str) -> Path:
    return Path(smollm2_gguf)


@pytest.fixture(scope="module")
def metadata(gguf_path: Path) -> dict[str, object]:
    return read_gguf_metadata(gguf_path)


@pytest.fixture(scope="module")
def tok(metadata: dict[str, object]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def ref(gguf_path: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _ref_chat_ids(ref, messages: list[dict]) -> list[int]:
    out = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def test_metadata_is_plain_python(gguf_path: Path, metadata: dict[str, object]) -> None:
    tokens = metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 49152 and tokens[1] == "<|im_start|>"
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "smollm"
    assert type(metadata["tokenizer.ggml.eos_token_id"]) is int
    assert type(metadata["tokenizer.ggml.add_bos_token"]) is bool
    assert all(type(t) is int for t in metadata["tokenizer.ggml.token_type"][:100])
    assert not any(key.startswith("GGUF.") for key in metadata)
    assert read_gguf_metadata(gguf.GGUFReader(gguf_path))["tokenizer.ggml.merges"][:3] == ["Ġ t", "Ġ a", "i n"]


def test_special_ids(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_ids[0] == 2 and 0 in tok.eos_token_ids  # <|endoftext|> also ends generation
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("x", add_special_tokens=True) == tok.encode("x", add_special_tokens=False)  # no BOS for SmolLM2
    assert tok.convert_ids_to_tokens([1, 2, 198]) == ["<|im_start|>", "<|im_end|>", "Ċ"]
    assert tok.decode([1, 19556, 2]) == "Hello"
    assert tok.decode([1, 19556, 2], skip_special_tokens=False) == "<|im_start|>Hello<|im_end|>"


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok: Tokenizer, ref, text: str) -> None:
    ids = tok.encode(text)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


@pytest.fixture(scope="module")
def smollm2_reference(ref):
    """transformers' backend with the pre-tokenizer of SmolLM2's own tokenizer.json.

    transformers' GGUF loader leaves out the digit split for "smollm", which only matters for a
    whitespace run before a digit ("x =  5"); llama.cpp and the original tokenizer split digits first.
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers

    backend = Backend.from_str(ref.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return backend


@pytest.mark.slow
def test_encode_matches_original_tokenizer_on_random_text(tok: Tokenizer, smollm2_reference) -> None:
    rng = random.Random(0)
    alphabet = "abcXYZ 0123456789\n\t.,'!?éàüßçñ中文字日本ひらカタ한국😀👍🏽\u200d-_()[]{}<>|"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert tok.encode(text) == smollm2_reference.encode(text).ids, text
    assert tok.encode("x =  5\n0") == smollm2_reference.encode("x =  5\n0").ids


@pytest.mark.slow
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok: Tokenizer, ref, messages: list[dict]) -> None:
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.encode(prompt, add_special_tokens=False) == _ref_chat_ids(ref, messages)


def test_chat_template_flattens_content_parts(tok: Tokenizer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]}]
    plain = [{"role": "user", "content": "Hello\nworld"}]
    assert tok.apply_chat_template(parts) == tok.apply_chat_template(plain)
    assert parts[0]["content"][0] == {"type": "text", "text": "Hello"}  # caller's messages untouched
    assert tok.apply_chat_template(plain, add_generation_prompt=False).endswith("<|im_end|>\n")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    with pytest.raises(ChatTemplateError, match="image_url"):
        tok.apply_chat_template(image)


CALL = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}


def test_null_content_renders_as_text(tok: Tokenizer) -> None:
    # OpenAI's own shapes for a tool-call turn and a refusal turn; SmolLM2's template reads
    # message['content'] whatever the turn holds.
    calls = [{"role": "user", "content": "6*7?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    empty = [calls[0], {"role": "assistant", "content": "", "tool_calls": [CALL]}, calls[2]]
    assert tok.apply_chat_template(calls) == tok.apply_chat_template(empty)
    refusal = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "refusal": "I can't."}]
    said = [refusal[0], {"role": "assistant", "content": "I can't."}]
    assert tok.apply_chat_template(refusal) == tok.apply_chat_template(said)
    parts = [refusal[0], {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}]
    assert tok.apply_chat_template(parts) == tok.apply_chat_template(said)


def test_a_template_that_cannot_render_is_named_without_jinja_internals() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    for template in ("{{ messages[0]['name'] + 1 }}", "{{ messages[0].content + 1 }}", "{{ 1 / 0 }}"):
        with pytest.raises(ChatTemplateError) as info:
            render_chat_template(template, msgs)
        assert info.value.param == "messages" and "cannot render these messages" in str(info.value)
        assert "dict object" not in str(info.value) and "unsupported operand" not in str(info.value)


def test_missing_template_raises(metadata: dict[str, object]) -> None:
    bare = Tokenizer.from_gguf_metadata({k: v for k, v in metadata.items() if k != "tokenizer.chat_template"})
    assert bare.chat_template is None
    with pytest.raises(ChatTemplateError):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])


def test_template_helpers_and_errors() -> None:
    msgs = [{"role": "user", "content": "<b>&"}]
    assert render_chat_template("{{ messages[0] | tojson }}", msgs) == '{"role": "user", "content": "<b>&"}'
    assert render_chat_template("{{ bos_token }}|{{ x }}", msgs, special_tokens={"bos_token": "<s>"}, x=3) == "<s>|3"
    loop = "{% for m in messages %}{% if loop.first %}{% break %}{% endif %}{% endfor %}{{ strftime_now('%Y')|length }}"
    assert render_chat_template(loop, msgs) == "4"
    ns = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    assert render_chat_template(ns, msgs) == "1"
    assert render_chat_template("{% generation %}G{% endgeneration %}", msgs) == "G"
    assert render_chat_template("{% if true %}\n  A\n{% endif %}\n", msgs) == "  A\n"  # trim/lstrip blocks
    assert render_chat_template("{{ 'x' if tools is none }}", msgs) == "x"
    assert render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": None, "x": 1}]) == ""
    with pytest.raises(ChatTemplateError, match="only user"):
        render_chat_template("{{ raise_exception('only user') }}", msgs)
    with pytest.raises(ChatTemplateError):
        render_chat_template("{% for %}", msgs)
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ ''.__class__.__mro__ }}", msgs)
    with pytest.raises(ChatTemplateError):
        render_chat_template("{% set ns = namespace(_x=1) %}", msgs)
    with pytest.raises(ChatTemplateError):
        render_chat_template("{% set _ = messages.append(1) %}", msgs)


def test_unknown_pre_type_and_model_raise(metadata: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="pre-tokenizer type 'no-such-pre'"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(ValueError, match="'bert'"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "bert"})


@pytest.mark.parametrize(
    ("pre", "text", "pieces"),
    [
        ("smollm", "x=12345 don't", ["x", "=", "1", "2", "3", "4", "5", "Ġdon", "'t"]),
        ("llama-bpe", "x=12345 DON'T\n\n", ["x", "=", "123", "45", "ĠDON", "'T", "ĊĊ"]),
        ("qwen2", "ab 123", ["ab", "Ġ", "1", "2", "3"]),
        ("gpt-2", "ab 123!!", ["ab", "Ġ123", "!!"]),
    ],
)
def test_pre_tokenizer_splits(metadata: dict[str, object], pre: str, text: str, pieces: list[str]) -> None:
    tok = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": pre})
    assert [p for p, _ in tok._backend.pre_tokenizer.pre_tokenize_str(text)] == pieces


def test_every_pre_type_builds_and_round_trips(metadata: dict[str, object]) -> None:
    text = "Hello, World! x=12345 ça 東京 😀\n\n  end"
    for pre in sorted(PRE_TYPES):
        tok = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": pre})
        assert tok.decode(tok.encode(text)) == text, pre


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_other_pre_types_match_transformers(metadata: dict[str, object], pre: str) -> None:
    pytest.importorskip("transformers")
    from transformers.integrations.gguf import convert_gguf_tokenizer

    unflagged = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.add_bos_token"}
    tok = Tokenizer.from_gguf_metadata({**unflagged, "tokenizer.ggml.pre": pre})
    ref, _ = convert_gguf_tokenizer("llama", _transformers_dict(metadata, pre_tokenizer_type=pre))
    ref.model.ignore_merges = pre == "llama-bpe"  # llama.cpp and Llama 3's tokenizer.json set it
    # Without the flag, llama.cpp adds BOS for the Llama 3 family only.
    assert (tok.encode("x")[0] == tok.bos_token_id) == (pre == "llama-bpe")
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids, text


def _transformers_dict(metadata: dict[str, object], **extra: object) -> dict[str, object]:
    keys = {"model": "tokenizer_type", "tokens": "tokens", "scores": "scores", "token_type": "token_type"}
    keys |= {"merges": "merges", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id"}
    found = {name: metadata.get(f"tokenizer.ggml.{key}") for key, name in keys.items()}
    return {**{name: value for name, value in found.items() if value is not None}, **extra}


def _sentencepiece_metadata() -> dict[str, object]:
    rng = random.Random(0)
    words = ["hello", "world", "the", "there", "a", "an", "in", "ing", "spaces", "line", "Hello", "Wor"]
    chars = sorted(set("".join(words)) | set("▁.,!?'xyzqHW"))
    multi = sorted({("▁" + w)[i:j] for w in words for i in range(len(w) + 1) for j in range(i + 2, len(w) + 2)})
    pieces = ["▁", *chars, *multi]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *dict.fromkeys(pieces)]
    scores = [0.0] * 259 + [-rng.uniform(0, 100) for _ in range(len(tokens) - 259)]
    types = [2, 3, 3, *([6] * 256), *([1] * (len(tokens) - 259))]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}",
    }


@pytest.mark.slow
def test_sentencepiece_matches_transformers() -> None:
    pytest.importorskip("transformers")
    from transformers.integrations.gguf import convert_gguf_tokenizer

    metadata = _sentencepiece_metadata()
    tok = Tokenizer.from_gguf_metadata(metadata)
    ref, _ = convert_gguf_tokenizer("llama", _transformers_dict(metadata))
    texts = ["hello world", " hello  there", "Hello World!\nline two", "ünïcödé 😀 zzz", "in the spaces"]
    for text in [*texts, "<s>the</s>", ""]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        if not text.startswith(" "):  # Metaspace does not add a second "▁" to text starting with a space
            assert tok.decode(ids) == text.replace("<s>", "").replace("</s>", "")
    assert tok.encode("hello")[0] == 1  # llama.cpp adds BOS to SentencePiece vocabularies by default
    assert tok.encode("hello", add_special_tokens=False)[0] != 1
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>[INST] hi [/INST]"
    no_bos = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.add_bos_token": False})
    assert no_bos.encode("hello") == tok.encode("hello", add_special_tokens=False)


@pytest.mark.slow
def test_from_hf_dir_matches(tok: Tokenizer, ref, tmp_path: Path) -> None:
    ref.save_pretrained(tmp_path)
    hf = Tokenizer.from_hf_dir(tmp_path)
    assert hf.chat_template == tok.chat_template
    assert (hf.bos_token_id, hf.eos_token_id, hf.vocab_size) == (tok.bos_token_id, tok.eos_token_id, tok.vocab_size)
    assert hf.eos_token_ids == tok.eos_token_ids
    for text in TEXTS:
        assert hf.encode(text) == tok.encode(text), text
    for messages in CONVERSATIONS:
        assert hf.apply_chat_template(messages) == tok.apply_chat_template(messages)


def test_from_hf_dir_reads_config_flags(tok: Tokenizer, tmp_path: Path) -> None:
    tok._backend.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<|im_start|>", "special": True},
        "eos_token": "<|endoftext|>",
        "add_bos_token": True,
        "chat_template": [{"name": "default", "template": "T"}, {"name": "tool_use", "template": "U"}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    hf = Tokenizer.from_hf_dir(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.eos_token_ids) == (1, 0, (0, 2))
    assert hf.encode("Hello") == [1, 19556]
    assert hf.encode("Hello", add_special_tokens=False) == [19556]
    assert hf.chat_template == "T"
