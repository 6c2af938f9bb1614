"""POST /v1/chat/completions: the chat template, then one engine request with n choices."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec

from engine.errors import InvalidRequestError
from engine.outputs import RequestOutput, TokenLogprob
from engine.tokenizer import Tokenizer
from gateway.http import Request, Response, StreamingResponse
from gateway.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    TopLogprob,
    UsageInfo,
)
from gateway.openai.serving import (
    SYSTEM_FINGERPRINT,
    ApiError,
    ServingContext,
    decode_body,
    finish_reason,
    json_response,
    sampling_params,
    sse,
    sse_done,
    start,
    token_text,
    usage_info,
)

_DECODER = msgspec.json.Decoder(ChatCompletionRequest)


async def create_chat_completion(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        req = decode_body(request, _DECODER)
        ctx.check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
        tok = ctx.tokenizer
        prompt_ids = tok.encode(tok.apply_chat_template(req.messages, add_generation_prompt=True),
                                add_special_tokens=False)
        outputs = await start(ctx.engine.generate(prompt_ids, params, request_id=request_id))
    except InvalidRequestError as exc:
        return ApiError.from_invalid(exc).response()
    except ApiError as exc:
        return exc.response()
    created = int(time.time())
    if req.stream:
        return StreamingResponse(_stream(ctx.tokenizer, req, request_id, created, outputs))
    return json_response(await _collect(ctx.tokenizer, req, request_id, created, outputs))


async def _collect(tok: Tokenizer, req: ChatCompletionRequest, request_id: str, created: int,
                   outputs: AsyncIterator[RequestOutput]) -> ChatCompletion:
    texts: list[list[str]] = [[] for _ in range(req.n)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    reasons: list[str | None] = [None] * req.n
    usage = None
    async for output in outputs:
        for delta in output.deltas:
            texts[delta.index].append(delta.text)
            logprobs[delta.index].extend(delta.logprobs or ())
            reasons[delta.index] = delta.finish_reason or reasons[delta.index]
        usage = output.usage or usage
    assert usage is not None, "the engine's last output carries usage"
    choices = [
        ChatChoice(index=i, message=ChatMessage(role="assistant", content="".join(texts[i])),
                   logprobs=_logprobs(tok, logprobs[i]) if req.logprobs else None,
                   finish_reason=finish_reason(reasons[i]))
        for i in range(req.n)
    ]
    return ChatCompletion(id=request_id, created=created, model=req.model, choices=choices,
                          usage=usage_info([usage]), system_fingerprint=SYSTEM_FINGERPRINT)


async def _stream(tok: Tokenizer, req: ChatCompletionRequest, request_id: str, created: int,
                  outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[bytes]:
    def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=req.model, choices=choices,
                                       system_fingerprint=SYSTEM_FINGERPRINT, usage=usage))

    try:
        yield chunk([ChatChunkChoice(i, ChatDelta(role="assistant", content="")) for i in range(req.n)])
        async for output in outputs:
            for delta in output.deltas:
                if delta.text or delta.logprobs:
                    lps = _logprobs(tok, delta.logprobs or []) if req.logprobs else None
                    yield chunk([ChatChunkChoice(delta.index, ChatDelta(content=delta.text), lps)])
                if delta.finish_reason is not None:
                    reason = finish_reason(delta.finish_reason)
                    yield chunk([ChatChunkChoice(delta.index, ChatDelta(), finish_reason=reason)])
            if output.usage is not None and req.stream_options and req.stream_options.include_usage:
                yield chunk([], usage_info([output.usage]))
        yield sse_done()
    finally:
        # Runs when the server closes us because the client left: aborts the engine request.
        await outputs.aclose()  # type: ignore[attr-defined]


def _logprobs(tok: Tokenizer, logprobs: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for lp in logprobs:
        text, raw = token_text(tok, lp.token_id)
        top = []
        for token_id, value in lp.top:
            top_text, top_raw = token_text(tok, token_id)
            top.append(TopLogprob(token=top_text, logprob=value, bytes=top_raw))
        content.append(ChatTokenLogprob(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top))
    return ChatLogprobs(content=content)
