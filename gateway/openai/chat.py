"""POST /v1/chat/completions: the chat template, then one engine request with n choices."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator

import msgspec

from engine.chat_template import render_chat_template
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
from gateway.openai.messages import check_messages, check_template_kwargs, check_unsupported
from gateway.openai.reasoning import ReasoningSplitter
from gateway.openai.serving import (
    SYSTEM_FINGERPRINT,
    ApiError,
    ServingContext,
    capped_max_tokens,
    decode_body,
    finish_reason,
    json_response,
    sampling_params,
    sse,
    sse_done,
    usage_info,
)
from gateway.openai.token_bytes import token_bytes, token_string
from gateway.openai.usage_comments import UsageTally, wants_usage_comments

_DECODER = msgspec.json.Decoder(ChatCompletionRequest)


async def create_chat_completion(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        req = decode_body(request, _DECODER)
    except ApiError as exc:
        return exc.response()
    try:
        ctx.check_model(req.model)
        ctx.check_generates(req.model)
        check_messages(req.messages)
        check_unsupported(req.tools, req.tool_choice, req.response_format)
        check_template_kwargs(req.chat_template_kwargs)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        prompt = _render(ctx, req)
        prompt_ids = ctx.tokenizer.encode(prompt, add_special_tokens=False)
        max_tokens = capped_max_tokens(max_tokens, req.max_tokens_cap, ctx.max_model_len - len(prompt_ids), req.n)
        params = sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
        outputs = await ctx.generate(prompt_ids, params, request_id, req.priority)
    except (InvalidRequestError, ApiError) as exc:
        error = ApiError.from_invalid(exc) if isinstance(exc, InvalidRequestError) else exc
        return _named_as_sent(error, req).response()
    created = int(time.time())
    markers = ctx.markers
    splitters = ([ReasoningSplitter(markers, markers.starts_thinking(prompt)) for _ in range(req.n)]
                 if markers is not None else None)
    if req.stream:
        tally = UsageTally([len(prompt_ids)]) if wants_usage_comments(request) else None
        return StreamingResponse(_stream(ctx.tokenizer, req, request_id, created, outputs, splitters, tally))
    return json_response(await ctx.whole(request, [request_id],
                                         _collect(ctx.tokenizer, req, request_id, created, outputs, splitters)))


def _named_as_sent(error: ApiError, req: ChatCompletionRequest) -> ApiError:
    """The error with the engine's field names turned into the ones this request sent: chat's
    top_logprobs is the engine's logprobs, and max_completion_tokens, which wins when given, its
    max_tokens."""
    names = {"logprobs": "top_logprobs"}
    if req.max_completion_tokens is not None:
        names["max_tokens"] = "max_completion_tokens"
    sent = names.get(error.param or "")
    if sent is not None:
        error.message = re.sub(rf"\b{error.param}\b", sent, error.message)
        error.param = sent
    return error


def _render(ctx: ServingContext, req: ChatCompletionRequest) -> str:
    tok = ctx.tokenizer
    extra = req.chat_template_kwargs or {}
    if ctx.chat_template is None:
        return tok.apply_chat_template(req.messages, add_generation_prompt=True, **extra)
    return render_chat_template(ctx.chat_template, req.messages, add_generation_prompt=True,
                                special_tokens={"bos_token": tok.bos_token, "eos_token": tok.eos_token}, **extra)


def _reasoning_tokens(splitters: list[ReasoningSplitter] | None) -> int:
    return sum(s.reasoning_tokens for s in splitters) if splitters else 0


async def _collect(tok: Tokenizer, req: ChatCompletionRequest, request_id: str, created: int,
                   outputs: AsyncIterator[RequestOutput],
                   splitters: list[ReasoningSplitter] | None) -> ChatCompletion:
    texts: list[list[str]] = [[] for _ in range(req.n)]
    thoughts: list[list[str]] = [[] for _ in range(req.n)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    reasons: list[str | None] = [None] * req.n
    usage = None
    async for output in outputs:
        for delta in output.deltas:
            i = delta.index
            if splitters is None:
                texts[i].append(delta.text)
            else:
                thought, text = splitters[i].feed(delta.text, delta.token_ids)
                thoughts[i].append(thought)
                texts[i].append(text)
                if delta.finish_reason is not None:
                    thought, text = splitters[i].flush()
                    thoughts[i].append(thought)
                    texts[i].append(text)
            logprobs[i].extend(delta.logprobs or ())
            reasons[i] = delta.finish_reason or reasons[i]
        usage = output.usage or usage
    assert usage is not None, "the engine's last output carries usage"
    choices = [
        ChatChoice(index=i, message=_message(texts[i], thoughts[i], splitters[i] if splitters else None),
                   logprobs=_logprobs(tok, logprobs[i]) if req.logprobs else None,
                   finish_reason=finish_reason(reasons[i]))
        for i in range(req.n)
    ]
    return ChatCompletion(id=request_id, created=created, model=req.model, choices=choices,
                          usage=usage_info([usage], _reasoning_tokens(splitters)),
                          system_fingerprint=SYSTEM_FINGERPRINT)


def _message(texts: list[str], thoughts: list[str], splitter: ReasoningSplitter | None) -> ChatMessage:
    content = "".join(texts)
    if splitter is None or not splitter.saw_reasoning:
        return ChatMessage(role="assistant", content=content)
    return ChatMessage(role="assistant", content=content or None, reasoning_content="".join(thoughts))


async def _stream(tok: Tokenizer, req: ChatCompletionRequest, request_id: str, created: int,
                  outputs: AsyncIterator[RequestOutput], splitters: list[ReasoningSplitter] | None,
                  tally: UsageTally | None) -> AsyncIterator[bytes]:
    """The chunks of each engine step; with a tally, each step's usage comment goes first (see
    gateway.openai.usage_comments)."""
    def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=req.model, choices=choices,
                                       system_fingerprint=SYSTEM_FINGERPRINT, usage=usage))

    def text_delta(thought: str, text: str) -> ChatDelta:
        return ChatDelta(content=text or None, reasoning_content=thought or None)

    try:
        if tally is not None:
            yield tally.comment()
        yield chunk([ChatChunkChoice(i, ChatDelta(role="assistant", content="")) for i in range(req.n)])
        async for output in outputs:
            events: list[bytes] = []
            for delta in output.deltas:
                lps = _logprobs(tok, delta.logprobs) if req.logprobs and delta.logprobs else None
                if splitters is None:
                    if delta.text or lps:
                        events.append(chunk([ChatChunkChoice(delta.index, ChatDelta(content=delta.text), lps)]))
                else:
                    splitter = splitters[delta.index]
                    thought, text = splitter.feed(delta.text, delta.token_ids)
                    if delta.finish_reason is not None:
                        more_thought, more_text = splitter.flush()
                        thought, text = thought + more_thought, text + more_text
                    if thought or text or lps:
                        events.append(chunk([ChatChunkChoice(delta.index, text_delta(thought, text), lps)]))
                if delta.finish_reason is not None:
                    reason = finish_reason(delta.finish_reason)
                    events.append(chunk([ChatChunkChoice(delta.index, ChatDelta(), finish_reason=reason)]))
            if tally is not None:
                tally.add(0, output)
                if comment := tally.comment(_reasoning_tokens(splitters)):
                    yield comment
            for event in events:
                yield event
            if output.usage is not None and req.stream_options and req.stream_options.include_usage:
                yield chunk([], usage_info([output.usage], _reasoning_tokens(splitters)))
        yield sse_done()
    finally:
        # Runs when the server closes us because the client left: aborts the engine request.
        await outputs.aclose()  # type: ignore[attr-defined]


def _logprobs(tok: Tokenizer, logprobs: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for lp in logprobs:
        top = []
        for token_id, value in lp.top:
            top_raw = token_bytes(tok, token_id)
            top.append(TopLogprob(token=token_string(top_raw), logprob=value, bytes=list(top_raw)))
        raw = token_bytes(tok, lp.token_id)
        content.append(ChatTokenLogprob(token=token_string(raw), logprob=lp.logprob, bytes=list(raw),
                                        top_logprobs=top))
    return ChatLogprobs(content=content)
