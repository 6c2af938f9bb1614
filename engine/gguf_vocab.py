"""A `tokenizers` backend rebuilt from the vocabulary a GGUF file stores under llama.cpp's key names."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

# llama.cpp's tokenizer.ggml.token_type values.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# llama.cpp (src/llama-vocab.cpp) splits text with these regexes in turn, keeping matches and gaps
# alike; its own names for each pre type. Where llama.cpp rewrote a regex for its engine, this is
# the tokenizer.json original, which Oniguruma runs as is.
_LLAMA3_FAMILY = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "exaone4"), (_GPT2,)),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), (r"\p{N}", _GPT2)
    ),
    **dict.fromkeys((*_LLAMA3_FAMILY, "dbrx", "smaug-bpe"), (_LLAMA3,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), (_QWEN2,)),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "tekken": (_TEKKEN,),
    **dict.fromkeys(("gpt-4o", "llama4"), (_GPT4O,)),
}
PRE_TYPES = frozenset(_PRE_SPLITS)
# llama.cpp turns on ignore_merges (a word that is itself a token is not re-merged) and BOS for these.
_WHOLE_WORD_AND_BOS = frozenset((*_LLAMA3_FAMILY, "tekken"))


def build_gguf_backend(metadata: Mapping[str, object]) -> tuple[Backend, bool]:
    """The backend tokenizer and whether the model wants a BOS prepended by default."""
    model = metadata.get("tokenizer.ggml.model")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])  # type: ignore[call-overload]
    types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)  # type: ignore[assignment]
    merges: Sequence[str] | None = metadata.get("tokenizer.ggml.merges")  # type: ignore[assignment]
    if model == "gpt2":
        pre = str(metadata.get("tokenizer.ggml.pre") or "default")
        tokens = _byte_level_spelling(tokens, types)
        backend = _byte_level(tokens, merges, pre)
        default_bos = pre in _WHOLE_WORD_AND_BOS
    elif model == "llama":
        scores: Sequence[float] = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)  # type: ignore
        unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
        if not isinstance(unk_id, int):
            unk_id = next((index for index, kind in enumerate(types) if kind == _UNKNOWN), None)
        prefix_space = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        unk = tokens[unk_id] if unk_id is not None else None
        backend = _sentencepiece(tokens, scores, merges, unk, prefix_space)
        default_bos = True
    else:
        raise ValueError(
            f"unsupported GGUF tokenizer model {model!r}: "
            "expected 'gpt2' (byte-level BPE) or 'llama' (SentencePiece BPE)"
        )
    named = {metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "unknown", "padding")}
    _add_special_tokens(backend, tokens, types, named)
    return backend, bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos))


def _byte_level_spelling(tokens: list[str], types: Sequence[int]) -> list[str]:
    # Normal tokens must be in the byte alphabet for BPE to reach them; a few converters store them as
    # plain text. Control and user-defined tokens keep their text: they are matched whole in the input.
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    return [
        token
        if kind in (_CONTROL, _USER_DEFINED) or set(token) <= alphabet
        else "".join(spelling[byte] for byte in token.encode())
        for token, kind in zip(tokens, types)
    ]


def _byte_level(tokens: list[str], merges: Sequence[str] | None, pre: str) -> Backend:
    if pre not in PRE_TYPES:
        raise ValueError(f"unknown GGUF pre-tokenizer type {pre!r} (tokenizer.ggml.pre); known: {sorted(PRE_TYPES)}")
    if merges is None:
        raise ValueError("GGUF byte-level BPE vocabulary has no tokenizer.ggml.merges")
    bpe = models.BPE(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=[_split_merge(merge) for merge in merges],
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        ignore_merges=pre in _WHOLE_WORD_AND_BOS,
    )
    backend = Backend(bpe)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in _PRE_SPLITS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(
    tokens: list[str],
    scores: Sequence[float],
    merges: Sequence[str] | None,
    unk: str | None,
    prefix_space: bool,
) -> Backend:
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [_split_merge(m) for m in merges] if merges is not None else _merges_from_scores(vocab, tokens, scores)
    bpe = models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    backend = Backend(bpe)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix_space else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(vocab: dict[str, int], tokens: list[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: every split of a token into two tokens, best score first.

    SentencePiece merges the adjacent pair whose concatenation scores highest; as a BPE merge list that
    is the pairs sorted by that score, ties as transformers breaks them so ids match it.
    """
    found: list[tuple[str, str, float]] = []
    for token, score in dict(zip(tokens, scores)).items():
        local = [
            (token[:cut], token[cut:], score)
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        found.extend(local)
    found.sort(key=lambda pair: (pair[2], len(pair[0]), len(pair[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _add_special_tokens(backend: Backend, tokens: list[str], types: Sequence[int], named: set[object]) -> None:
    # Control tokens ("<|im_start|>") must come out of a rendered chat template as one id, and so must
    # user-defined ones ("<think>"), which llama.cpp also matches whole but does not treat as special.
    special = [
        AddedToken(token, normalized=False, special=True)
        for index, (token, kind) in enumerate(zip(tokens, types))
        if kind in (_UNKNOWN, _CONTROL) or index in named
    ]
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, types)
        if kind == _USER_DEFINED
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user_defined)


def _split_merge(merge: str) -> tuple[str, str]:
    # llama.cpp searches for the separator from the second character on, so a merge may start with " ".
    cut = merge.find(" ", 1)
    return merge[:cut], merge[cut + 1 :]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping
