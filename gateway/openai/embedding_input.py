"""What OpenAI's embeddings `input` may be, checked alike by the gateway (before any stage reserves
for it) and by the engine server: a string, a list of strings, a list of token ids, or a list of
lists of token ids; one vector for each string or list of token ids."""

from __future__ import annotations

EmbeddingInput = str | list[int]
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request

_SHAPE = "`input` must be a string, a list of strings, a list of token ids or a list of lists of token ids."


def split_inputs(value: object) -> list[EmbeddingInput]:
    """The inputs, one per vector; ValueError saying what is wrong (its callers name `input`)."""
    if isinstance(value, str):
        inputs: list[EmbeddingInput] = [value]
    elif isinstance(value, list) and value and _token_ids(value):
        inputs = [value]
    elif isinstance(value, list) and (all(isinstance(v, str) for v in value)
                                      or all(isinstance(v, list) and _token_ids(v) for v in value)):
        inputs = value
    else:
        raise ValueError(_SHAPE)
    if not inputs or not all(inputs):
        raise ValueError("`input` must not be empty, nor hold an empty string or list.")
    if len(inputs) > MAX_INPUTS:
        raise ValueError(f"`input` holds {len(inputs)} items; at most {MAX_INPUTS} are allowed.")
    return inputs


def _token_ids(items: list[object]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)
