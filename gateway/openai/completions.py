"""POST /v1/completions: raw prompts (text or token ids), one engine request per prompt."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import msgspec

from engine.errors import InvalidRequestError
from engine.outputs import RequestOutput, TokenLogprob, Usage
from engine.tokenizer import Tokenizer
from gateway.http import Request, Response, StreamingResponse
from gateway.openai.merge import merge_streams
from gateway.openai.protocol import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    UsageInfo,
)
from gateway.openai.serving import (
    SYSTEM_FINGERPRINT,
    ApiError,
    ServingContext,
    Started,
    capped_max_tokens,
    decode_body,
    finish_reason,
    json_response,
    sampling_params,
    sse,
    sse_done,
    usage_info,
)
from gateway.openai.token_bytes import TextOffsets, token_bytes, token_string
from gateway.openai.usage_comments import UsageTally, wants_usage_comments

_DECODER = msgspec.json.Decoder(CompletionRequest)


async def create_completion(ctx: ServingContext, request: Request) -> Response | StreamingResponse:
    request_id = f"cmpl-{uuid.uuid4().hex}"
    started: list[Started] = []
    try:
        req = decode_body(request, _DECODER)
        ctx.check_model(req.model)
        ctx.check_generates(req.model)
        _check_unsupported(req)
        prompts = _prompts(req.prompt)
        echoes = [_echo(ctx.tokenizer, p) if req.echo else "" for p in prompts]
        comments = bool(req.stream) and wants_usage_comments(request)
        if comments:  # the engine's own encoding, done here so the comments count prompts from the start
            prompts = [ctx.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
        max_tokens = capped_max_tokens(COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
                                       req.max_tokens_cap, ctx.max_model_len, req.n)
        params = sampling_params(req, max_tokens, req.logprobs)
        for i, prompt in enumerate(prompts):
            started.append(await ctx.generate(prompt, params, f"{request_id}-{i}", req.priority))
    except (InvalidRequestError, ApiError) as exc:
        await _abort_all(started)  # a later prompt was refused
        error = ApiError.from_invalid(exc) if isinstance(exc, InvalidRequestError) else exc
        if error.param == "messages":  # the engine's name for a prompt too long for the context
            error.param = "prompt"
        return error.response()
    except BaseException:  # the client left (the handler is cancelled) while later prompts were starting
        await _abort_all(started)
        raise
    created = int(time.time())
    if req.stream:
        tally = UsageTally([len(p) for p in prompts]) if comments else None
        return StreamingResponse(_stream(ctx.tokenizer, req, request_id, created, started, echoes, tally))
    ids = [f"{request_id}-{i}" for i in range(len(started))]
    results = await ctx.whole(request, ids, asyncio.gather(*(_collect(ctx.tokenizer, req, outputs, echo)
                                                             for outputs, echo in zip(started, echoes))))
    choices = [choice for prompt_choices, _ in results for choice in prompt_choices]
    for index, choice in enumerate(choices):  # choices of prompt p are numbered p * n + i
        choice.index = index
    return json_response(Completion(id=request_id, created=created, model=req.model, choices=choices,
                                    usage=usage_info([usage for _, usage in results]),
                                    system_fingerprint=SYSTEM_FINGERPRINT))


async def _abort_all(started: list[Started]) -> None:
    """Stops the prompts already running; none of their outputs will be read."""
    for outputs in started:
        await outputs.aclose()


def _prompts(prompt: str | list[str | int | list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # type: ignore[list-item]
    if prompt and (all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt)):
        return prompt  # type: ignore[return-value]
    raise ApiError(400, "prompt must be a string, a list of strings, a list of token ids, or a list of "
                        "token id lists", param="prompt")


def _check_unsupported(req: CompletionRequest) -> None:
    if req.suffix:
        raise ApiError(400, "suffix is not supported by this server (no insertion mode)", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise ApiError(400, "best_of is not supported by this server: ask for n choices instead", param="best_of")
    if req.echo and req.logprobs is not None:
        raise ApiError(400, "echo with logprobs is not supported by this server (no prompt logprobs)", param="echo")


def _echo(tok: Tokenizer, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else tok.decode(prompt, skip_special_tokens=False)


class _Logprobs:
    """Builds the legacy logprobs lists for one choice; text_offset counts from the choice's start.
    Tokens are named as gateway/openai/token_bytes.py says, so top_logprobs keys never collide."""

    def __init__(self, tok: Tokenizer) -> None:
        self._tok = tok
        self._offsets = TextOffsets()

    def convert(self, logprobs: list[TokenLogprob]) -> CompletionLogprobs:
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for lp in logprobs:
            raw = token_bytes(self._tok, lp.token_id)
            out.tokens.append(token_string(raw))
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({token_string(token_bytes(self._tok, t)): value for t, value in lp.top})
            out.text_offset.append(self._offsets.next(raw))
        return out


async def _collect(tok: Tokenizer, req: CompletionRequest, outputs: AsyncIterator[RequestOutput],
                   echo: str) -> tuple[list[CompletionChoice], Usage]:
    texts: list[list[str]] = [[echo] for _ in range(req.n)]
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
        CompletionChoice(index=i, text="".join(texts[i]),
                         logprobs=_Logprobs(tok).convert(logprobs[i]) if req.logprobs is not None else None,
                         finish_reason=finish_reason(reasons[i]))
        for i in range(req.n)
    ]
    return choices, usage


async def _stream(tok: Tokenizer, req: CompletionRequest, request_id: str, created: int,
                  streams: list[AsyncIterator[RequestOutput]], echoes: list[str],
                  tally: UsageTally | None) -> AsyncIterator[bytes]:
    """Chunks of all prompts as they come; choice j of prompt i is numbered i * n + j, as OpenAI does.
    Echoed prompts come first, a chunk each. With a tally, each step's usage comment goes before its
    chunks (see gateway.openai.usage_comments)."""
    def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> bytes:
        return sse(Completion(id=request_id, created=created, model=req.model, choices=choices,
                              system_fingerprint=SYSTEM_FINGERPRINT, usage=usage))

    converters = [_Logprobs(tok) for _ in range(req.n * len(streams))]
    usages: list[Usage] = []
    merged = merge_streams(streams)
    try:
        if tally is not None:
            yield tally.comment()
        for prompt_index, echo in enumerate(echoes):
            if echo:
                for index in range(prompt_index * req.n, (prompt_index + 1) * req.n):
                    yield chunk([CompletionChoice(index, echo, None, None)])
        async for prompt_index, output in merged:
            if tally is not None:
                tally.add(prompt_index, output)
                if comment := tally.comment():
                    yield comment
            for delta in output.deltas:
                if delta.text or delta.logprobs or delta.finish_reason is not None:
                    index = prompt_index * req.n + delta.index
                    lps = converters[index].convert(delta.logprobs or []) if req.logprobs is not None else None
                    yield chunk([CompletionChoice(index, delta.text, lps, finish_reason(delta.finish_reason))])
            if output.usage is not None:
                usages.append(output.usage)
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], usage_info(usages))
        yield sse_done()
    finally:
        # Runs when the server closes us because the client left: aborts every prompt's request.
        await merged.aclose()
