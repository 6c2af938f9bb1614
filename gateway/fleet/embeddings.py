"""POST /v1/embeddings as the gateway reads it: the inputs to embed, checked before any stage
reserves for them, and their token estimate. The answer is whole JSON with a usage of prompt tokens
only, which the request path reads as it reads a completion's."""

from __future__ import annotations

from gateway.fleet.errors import GatewayError
from gateway.fleet.wire import RoutingFields

EMBEDDINGS_PATH = "/v1/embeddings"

# One vector is made for each: a text, or a prompt of token ids.
EmbeddingInput = str | list[int]

_SHAPE = "`input` must be a string, a list of strings, a list of token ids or a list of lists of token ids"


def embedding_inputs(fields: RoutingFields) -> list[EmbeddingInput]:
    """The inputs of an embeddings request, one per vector; a 400 naming `input` when there are none
    or they are not one of OpenAI's shapes (an empty one included: OpenAI refuses it too)."""
    if fields.stream:  # OpenAI's embeddings have no stream; a whole answer is all an engine sends
        raise GatewayError(400, "Embeddings are not streamed: `stream` must be false or absent.", param="stream")
    value = fields.input
    if value is None:
        raise GatewayError(400, "`input` is required.", param="input")
    if isinstance(value, str):
        inputs: list[EmbeddingInput] = [value]
    elif isinstance(value, list) and value and _token_ids(value):
        inputs = [value]
    elif isinstance(value, list) and (all(isinstance(v, str) for v in value)
                                      or all(isinstance(v, list) and _token_ids(v) for v in value)):
        inputs = value
    else:
        raise GatewayError(400, _SHAPE, param="input")
    if not inputs or not all(inputs):
        raise GatewayError(400, "`input` must not be empty, nor hold an empty string or list.", param="input")
    return inputs


def estimated_tokens(inputs: list[EmbeddingInput]) -> int:
    """Token ids count exactly; a text about four characters a token, as a completion's prompt."""
    return sum(len(item) if isinstance(item, list) else len(item) // 4 + 8 for item in inputs)


def first_text(inputs: list[EmbeddingInput]) -> str:
    """The first input as text, for the prefix key (token ids in their text form, as a completion's)."""
    first = inputs[0]
    return first if isinstance(first, str) else " ".join(map(str, first))


def _token_ids(items: list[object]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)
