"""Text <-> token ids for one model, from a GGUF file's metadata or a Hugging Face folder."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import processors
from tokenizers import Tokenizer as Backend

from engine.byte_pieces import byte_pieces
from engine.chat_template import ChatTemplateError, render_chat_template
from engine.gguf_vocab import build_gguf_backend

# Token texts that end a turn or a document, as llama.cpp's end-of-generation list has them.
_END_OF_GENERATION = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what serving needs around it: special ids and the chat template."""

    __slots__ = ("_backend", "_vocab_size", "bos_token_id", "eos_token_id", "eos_token_ids", "chat_template",
                 "_pieces")

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        extra_eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self._backend = backend
        self._vocab_size = vocab_size if vocab_size is not None else backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.eos_token_ids = _end_of_generation_ids(backend, eos_token_id, extra_eos_token_ids)
        self.chat_template = chat_template
        self._pieces: dict[bool, tuple[bytes, ...] | None] = {}

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, object]) -> Tokenizer:
        """Build from the "tokenizer.*" keys of a GGUF file (see engine.loader.gguf_metadata)."""
        backend, add_bos = build_gguf_backend(metadata)
        tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]  # type: ignore[assignment]
        bos_id = _optional_int(metadata.get("tokenizer.ggml.bos_token_id"))
        eos_id = _optional_int(metadata.get("tokenizer.ggml.eos_token_id"))
        add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
        _set_bos_eos_processor(backend, bos_id if add_bos else None, eos_id if add_eos else None)
        turn_ends = (metadata.get(f"tokenizer.ggml.{key}_token_id") for key in ("eot", "eom"))
        template = metadata.get("tokenizer.chat_template")
        return cls(
            backend,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            extra_eos_token_ids=[i for i in map(_optional_int, turn_ends) if i is not None],
            chat_template=template if isinstance(template, str) else None,
            vocab_size=len(tokens),
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Build from `tokenizer.json`, `tokenizer_config.json` and, if present, `generation_config.json`."""
        root = Path(path)
        backend = Backend.from_file(str(root / "tokenizer.json"))
        config = _read_json(root / "tokenizer_config.json")
        generation = _read_json(root / "generation_config.json")
        bos_id = _token_id(backend, config.get("bos_token"), generation.get("bos_token_id"))
        eos_id = _token_id(backend, config.get("eos_token"), None)
        generation_eos = generation.get("eos_token_id")
        generation_eos_ids = generation_eos if isinstance(generation_eos, list) else [generation_eos]
        extra_eos = [i for i in generation_eos_ids if isinstance(i, int)]
        if eos_id is None and extra_eos:
            eos_id = extra_eos[0]
        # As in transformers: explicit flags replace tokenizer.json's post-processor, else it is kept.
        if "add_bos_token" in config or "add_eos_token" in config:
            _set_bos_eos_processor(
                backend,
                bos_id if config.get("add_bos_token") else None,
                eos_id if config.get("add_eos_token") else None,
            )
        return cls(
            backend,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            extra_eos_token_ids=extra_eos,
            chat_template=_hf_chat_template(root, config),
        )

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token(self) -> str | None:
        return self._backend.id_to_token(self.bos_token_id) if self.bos_token_id is not None else None

    @property
    def eos_token(self) -> str | None:
        return self._backend.id_to_token(self.eos_token_id) if self.eos_token_id is not None else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds BOS/EOS where the model asks for them.

        A prompt rendered by `apply_chat_template` already carries its BOS: encode it with False.
        """
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def byte_pieces(self, skip_special_tokens: bool = True) -> tuple[bytes, ...] | None:
        """Each id's bytes when the decoder is byte-level (engine/byte_pieces.py), else None; built
        on first use (~50 ms for 50k tokens) and kept."""
        if skip_special_tokens not in self._pieces:
            size = max(self._vocab_size, self._backend.get_vocab_size(with_added_tokens=True))
            self._pieces[skip_special_tokens] = byte_pieces(self._backend, size, skip_special_tokens)
        return self._pieces[skip_special_tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(i) for i in ids]

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, object]], add_generation_prompt: bool = True, **kwargs: object
    ) -> str:
        """The prompt string for `messages`, rendered with the model's own template."""
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template; send a plain completion prompt instead")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens={"bos_token": self.bos_token, "eos_token": self.eos_token},
            **kwargs,
        )


def _end_of_generation_ids(backend: Backend, eos_id: int | None, extra: Sequence[int]) -> tuple[int, ...]:
    # Only special tokens count: a normal vocabulary piece that happens to read "<EOT>" must not stop output.
    special = {token.content: i for i, token in backend.get_added_tokens_decoder().items() if token.special}
    by_text = [special[text] for text in _END_OF_GENERATION if text in special]
    candidates = ([eos_id] if eos_id is not None else []) + list(extra) + by_text
    return tuple(dict.fromkeys(candidates))


def _set_bos_eos_processor(backend: Backend, bos_id: int | None, eos_id: int | None) -> None:
    pieces, special = ["$A"], []
    for token_id, at_start in ((bos_id, True), (eos_id, False)):
        if token_id is None:
            continue
        content = backend.id_to_token(token_id)
        pieces.insert(0 if at_start else len(pieces), content)
        special.append((content, token_id))
    backend.post_processor = processors.TemplateProcessing(single=pieces, special_tokens=special)


def _hf_chat_template(root: Path, config: Mapping[str, object]) -> str | None:
    # transformers >= 4.43 writes the template to its own file; older folders keep it in the config.
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _read_json(root / "chat_template.json").get("chat_template", config.get("chat_template"))
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {entry["name"]: entry["template"] for entry in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_id(backend: Backend, token: object, fallback: object) -> int | None:
    content = token.get("content") if isinstance(token, Mapping) else token
    if isinstance(content, str) and (found := backend.token_to_id(content)) is not None:
        return found
    return fallback if isinstance(fallback, int) else None


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def _read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


__all__ = ["ChatTemplateError", "Tokenizer"]
