"""POST /v1/embeddings: each input one engine request of an embedding engine (`--task embed`), all
sent at once so that the scheduler batches them; the vectors come back in input order."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid

import msgspec

from engine.errors import InvalidRequestError
from engine.outputs import RequestOutput
from engine.pooling import shorten
from gateway.http import Request, Response
from gateway.openai.embedding_input import EmbeddingInput, split_inputs
from gateway.openai.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from gateway.openai.serving import ApiError, ServingContext, decode_body, json_response

_DECODER = msgspec.json.Decoder(EmbeddingRequest)


async def create_embedding(ctx: ServingContext, request: Request) -> Response:
    request_id = f"embd-{uuid.uuid4().hex}"
    try:
        req = decode_body(request, _DECODER)
        ctx.check_model(req.model)
        if not ctx.embeds:
            raise ApiError(400, f"The model `{req.model}` does not serve embeddings (start its engine with "
                                "--task embed).", param="model")
        engine = ctx.engine.engine
        dimensions = _dimensions(req.dimensions, engine.model_config.hidden_size, engine.matryoshka_dimensions)
        inputs = _inputs(req.input)
        ids = [f"{request_id}-{i}" for i in range(len(inputs))]
        outputs = await ctx.whole(request, ids, _embed_all(ctx, inputs, ids, req.priority))
    except (InvalidRequestError, ApiError) as exc:
        error = ApiError.from_invalid(exc) if isinstance(exc, InvalidRequestError) else exc
        if error.param in ("messages", "prompt"):  # the engine's names for a prompt it refuses
            error.param = "input"
        return error.response()
    encode = _base64 if req.encoding_format == "base64" else list
    vectors = [out.embedding or [] for out in outputs]
    if dimensions is not None:
        vectors = [shorten(v, dimensions) for v in vectors]
    data = [Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)]
    return json_response(EmbeddingList(data=data, model=req.model, usage=_usage(outputs)))


async def _embed_all(ctx: ServingContext, inputs: list[str | list[int]], ids: list[str],
                     priority: int) -> list[RequestOutput]:
    """The inputs' outputs, in order; the first refusal stops the others (cancelling a call aborts
    its engine request), as does this call's own cancellation (the client left)."""
    tasks = [asyncio.ensure_future(ctx.engine.embed(text, request_id, priority)) for text, request_id in zip(inputs, ids)]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done


def _inputs(given: str | list[str | int | list[int]]) -> list[EmbeddingInput]:
    """The request's inputs, each a non-empty string or token id list."""
    try:
        return split_inputs(given)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="input") from None


def _dimensions(dimensions: int | None, hidden_size: int, allowed: tuple[int, ...] | None) -> int | None:
    """The size to shorten the vectors to, None for the model's own; ApiError for one it cannot give:
    a Matryoshka-trained model gives its listed sizes (any up to its own where none are listed), any
    other model only its own."""
    if dimensions is None or dimensions == hidden_size:
        return None
    if not 1 <= dimensions < hidden_size:
        raise ApiError(400, f"dimensions must be between 1 and {hidden_size}, this model's size",
                       param="dimensions")
    if allowed is None:
        raise ApiError(400, f"dimensions must be {hidden_size}, this model's size: it is not known to be "
                            "Matryoshka-trained (start its engine with --matryoshka if it is)", param="dimensions")
    if allowed and dimensions not in allowed:
        sizes = ", ".join(str(d) for d in (*allowed, hidden_size))
        raise ApiError(400, f"dimensions must be one of {sizes}", param="dimensions")
    return dimensions


def _base64(vector: list[float]) -> str:
    """OpenAI's form: the little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _usage(outputs: list[RequestOutput]) -> EmbeddingUsage:
    usages = [out.usage for out in outputs if out.usage is not None]
    prompt = sum(u.prompt_tokens for u in usages)
    energies = [u.energy_joules for u in usages]
    energy = None if not energies or None in energies else sum(e for e in energies if e is not None)
    return EmbeddingUsage(prompt_tokens=prompt, total_tokens=prompt, energy_joules=energy)
