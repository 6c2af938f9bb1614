"""POST /v1/embeddings as the gateway reads it: the inputs to embed, checked before any stage
reserves for them, and their token estimate. The answer is whole JSON with a usage of prompt tokens
only, which the request path reads as it reads a completion's."""

from __future__ import annotations

from gateway.fleet.errors import GatewayError
from gateway.fleet.wire import RoutingFields
from gateway.openai.embedding_input import EmbeddingInput, split_inputs

EMBEDDINGS_PATH = "/v1/embeddings"


def embedding_inputs(fields: RoutingFields) -> list[EmbeddingInput]:
    """The inputs of an embeddings request, one per vector; a 400 naming `input` when there are none
    or they are not one of OpenAI's shapes (gateway/openai/embedding_input.py)."""
    if fields.stream:  # OpenAI's embeddings have no stream; a whole answer is all an engine sends
        raise GatewayError(400, "Embeddings are not streamed: `stream` must be false or absent.", param="stream")
    if fields.input is None:
        raise GatewayError(400, "`input` is required.", param="input")
    try:
        return split_inputs(fields.input)
    except ValueError as exc:
        raise GatewayError(400, str(exc), param="input") from None


def estimated_tokens(inputs: list[EmbeddingInput]) -> int:
    """Token ids count exactly; a text about four characters a token, as a completion's prompt."""
    return sum(len(item) if isinstance(item, list) else len(item) // 4 + 8 for item in inputs)


def first_text(inputs: list[EmbeddingInput]) -> str:
    """The first input as text, for the prefix key (token ids in their text form, as a completion's)."""
    first = inputs[0]
    return first if isinstance(first, str) else " ".join(map(str, first))

