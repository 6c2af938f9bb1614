"""The gateway's request path: read the routing fields, run the stages, pick a host, forward,
retry on another host before the first byte, relay the answer, account for it.

Non-streaming answers are read whole before anything is sent, so any failure is retried; the read
runs in a task of its own, so a client that leaves before the answer (499) is billed the engine's
exact usage once the answer arrives. A stream is committed to a host once its first event arrived;
a failure after that ends the client's stream with an error event (never a silent truncation). The
engine is always asked for a usage chunk, so the stages get exact token counts; it is passed on
only to clients that asked for it. It is also asked for usage comments (`: usage {...}` events, see
gateway.openai.usage_comments): the counts so far, kept in `exchange.usage` and never relayed, so a
stream cut short (the client left: 499, the engine died: 502) is billed what the engine produced up
to there. A server that sends none (another OpenAI-compatible backend) leaves the usage unknown and
the stages estimate it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec

from gateway.fleet.backend import BackendResponse
from gateway.fleet.balancer import pick_host, prefix_key
from gateway.fleet.embeddings import EMBEDDINGS_PATH, embedding_inputs, estimated_tokens, first_text
from gateway.fleet.errors import GatewayError, retry_after_s, unavailable
from gateway.fleet.exchange import Exchange, Stage
from gateway.fleet.fleet import Fleet
from gateway.fleet.host import HostState
from gateway.fleet.http_client import UpstreamError
from gateway.fleet.sse import event_data, sse_events, usage_comment
from gateway.fleet.wire import CompletionTokensDetails, PromptTokensDetails, RoutingFields, Usage, UsageFields
from gateway.http import Request, Response, StreamingResponse
from gateway.http.json_errors import invalid_json_message, validation_param
from gateway.openai.protocol import ABORT_TAG_HEADER, default_max_tokens

_ROUTING = msgspec.json.Decoder(RoutingFields)
_USAGE = msgspec.json.Decoder(UsageFields)
_STREAM_HEADERS = (("x-llmaas-usage", "comments"),)  # what gateway.openai.usage_comments answers to
_ENCODER = msgspec.json.Encoder()
# An engine that is overloaded or going down answers these before doing any work: try another.
_RETRY_STATUSES = frozenset((502, 503, 504))
_FORCE_USAGE = b',"stream_options":{"include_usage":true}}'
# Stream events are classified by pattern, not decoded: ours are compact JSON, another server's
# (kind "openai") may put spaces after its colons. A content event carries a non-empty string.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_CONTENT = re.compile(rb'"(?:content|reasoning_content|text)"\s*:\s*"[^"]')
# How an event stream's first event may begin (a field of the SSE format, or a comment).
_SSE_STARTS = (b"data:", b":", b"event:", b"id:", b"retry:")
# Request ids: unique per process start, cheaper than a uuid4 each.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count()


class UsageComment(msgspec.Struct):
    """The body of a `: usage` comment: the stream's cumulative counts so far. The wire contract of
    gateway.openai.usage_comments, restated: the fleet speaks HTTP to any engine, not its code."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


_USAGE_COMMENT = msgspec.json.Decoder(UsageComment)


class Proxy:
    def __init__(self, fleet: Fleet, stages: list[Stage] | None = None) -> None:
        self.fleet = fleet
        self.stages = stages or []
        self._settling: set[asyncio.Future[Any]] = set()  # answers, ledger writes and aborts of requests whose client left
        self._handling = 0  # requests in handle() now

    async def handle(self, request: Request) -> Response | StreamingResponse:
        self._handling += 1
        try:
            return await self._handle(request)
        finally:
            self._handling -= 1

    async def _handle(self, request: Request) -> Response | StreamingResponse:
        try:
            exchange = self._exchange(request)
        except GatewayError as exc:
            for stage in self.stages:  # the caller first (a bad key is a 401 whatever the body)
                refuse_unread = getattr(stage, "refuse_unread", None)
                if refuse_unread is not None:
                    exc = refuse_unread(request, exc)
            return exc.response()
        admitted: list[Stage] = []
        try:
            for stage in self.stages:
                await stage.admit(exchange)
                admitted.append(stage)
            if exchange.overrides:
                # Appended keys win over the client's: JSON decoders keep a repeated key's last value.
                extra = _ENCODER.encode(exchange.overrides)
                exchange.body = exchange.body.rstrip()[:-1] + b"," + extra[1:]
            return await self._forward(exchange, admitted)
        except GatewayError as exc:
            exchange.status, exchange.error_code = exc.status, exc.code
            _finish(exchange, admitted)
            response = exc.response()
            response.headers.extend(exchange.response_headers)
            return response
        except BaseException:
            exchange.status = exchange.status or 499  # cancelled: the client left
            _finish(exchange, admitted)
            raise

    def _exchange(self, request: Request) -> Exchange:
        try:
            fields = _ROUTING.decode(request.body)
            # JSON is UTF-8; the decoder checks only the strings it reads, the stages read others.
            request.body.decode()
        except msgspec.ValidationError as exc:
            raise GatewayError(400, str(exc), param=validation_param(str(exc))) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise GatewayError(400, f"Invalid JSON body: {invalid_json_message(request.body, exc)}") from None
        _check_sizes(fields)
        routing = self.fleet.routing
        if request.path == EMBEDDINGS_PATH:  # vectors: a prompt estimate, no output
            inputs = embedding_inputs(fields)
            text, num_prompts, prompt_estimate = first_text(inputs), len(inputs), estimated_tokens(inputs)
            estimate = prompt_estimate
        else:
            text = _prompt_text(fields)
            max_tokens = (fields.max_completion_tokens or fields.max_tokens or default_max_tokens(request.path)
                          or routing.default_max_tokens)
            num_prompts = len(fields.prompt) if isinstance(fields.prompt, list) and fields.prompt and \
                not isinstance(fields.prompt[0], int) else 1
            prompt_estimate = (len(text) // 4 + 8) * num_prompts
            estimate = prompt_estimate + max_tokens * max(fields.n or 1, 1) * num_prompts
        include_usage = bool(fields.stream_options and fields.stream_options.include_usage)
        body = request.body
        if fields.stream and not include_usage:
            body = body.rstrip()[:-1] + _FORCE_USAGE  # the last key wins in JSON decoders
        return Exchange(request=request, request_id=request.headers.get("x-request-id") or f"{_ID_PREFIX}-{next(_ID_COUNTER)}",
                        path=request.path, fields=fields, body=body, prompt_text=text,
                        estimated_prompt_tokens=prompt_estimate, estimated_tokens=estimate,
                        num_prompts=num_prompts, include_usage=include_usage, affinity_key=prefix_key(text[:routing.affinity_min_chars],
                                                                              routing.affinity_min_chars))

    async def _forward(self, exchange: Exchange, admitted: list[Stage]) -> Response | StreamingResponse:
        routing = self.fleet.routing
        hosts = self.fleet.hosts_for(exchange.model)
        tried: set[str] = set()
        last_error = "no healthy host"
        for _ in range(routing.max_attempts):
            host = pick_host(hosts, exchange.affinity_key, routing.affinity_slack_ratio,
                             routing.affinity_slack_tokens, tried)
            if host is None:
                break
            tried.add(host.name)
            exchange.attempts += 1
            try:
                return await self._attempt(exchange, host, admitted)
            except _Retry as retry:
                last_error = str(retry)
        raise unavailable(f"No engine could serve model `{exchange.model}` ({last_error}).",
                          retry_after_s(routing.health_interval_s))

    async def _attempt(self, exchange: Exchange, host: HostState, admitted: list[Stage]) -> Response | StreamingResponse:
        """One host's try. Raises _Retry when another host may still serve the request."""
        cost = exchange.estimated_tokens
        threshold = self.fleet.routing.failure_threshold
        host.begin(cost)
        upstream: BackendResponse | None = None
        handed_over = False
        try:
            headers = [("x-request-id", exchange.request_id)]
            if not exchange.stream:
                tag = secrets.token_hex(12)  # ours, not the client's request id: nobody else can name it
                headers.append((ABORT_TAG_HEADER, tag))
                fetch = asyncio.ensure_future(_whole_answer(host, exchange.path, exchange.body, headers))
                try:
                    status, content_type, body = await asyncio.shield(fetch)
                except asyncio.CancelledError:
                    # The client left: our engines stop the request (its answer then comes at once),
                    # and the answer, once it comes, bills the engine's exact counts.
                    handed_over = True
                    self._bill_when_answered(exchange, host, fetch, admitted)
                    self._keep(fetch)
                    if host.kind == "llmaas" and not fetch.done():
                        self._keep(asyncio.ensure_future(_abort(host, tag)))
                    raise
                if status in _RETRY_STATUSES:
                    raise self._failed(host, f"{host.name} answered {status}")
                if status == 200 and not _json_object(body):
                    raise self._failed(host, f"{host.name} answered 200 with a body that is not a completion")
                exchange.host = host.name
                return await self._answer(exchange, host, status, content_type, body, admitted)
            headers.extend(_STREAM_HEADERS)
            upstream = await host.backend.request("POST", exchange.path, exchange.body, headers)
            if upstream.status in _RETRY_STATUSES:
                raise self._failed(host, f"{host.name} answered {upstream.status}")
            exchange.host = host.name
            if upstream.status != 200:
                return await self._answer(exchange, host, upstream.status,
                                          upstream.headers.get("content-type", "application/json"),
                                          await upstream.read(), admitted)
            events = sse_events(upstream.chunks())
            first = await anext(events, b"")
            if not first.startswith(_SSE_STARTS):  # nothing, or not an event stream (an HTML page)
                raise self._failed(host, f"{host.name} answered 200 with no event stream")
            host.record_success()
            exchange.first_byte = time.monotonic()
            handed_over = True
            return StreamingResponse(self._relay(exchange, host, upstream, events, first, admitted),
                                     headers=list(exchange.response_headers))
        except UpstreamError as exc:
            host.record_failure(str(exc), threshold)
            raise _Retry(str(exc)) from None
        finally:
            if not handed_over:
                if upstream is not None:
                    upstream.close()
                host.end(cost)

    def _failed(self, host: HostState, error: str) -> _Retry:
        """A host's answer that counts against it (the breaker) and goes to the next host."""
        host.record_failure(error, self.fleet.routing.failure_threshold)
        return _Retry(error)

    async def _answer(self, exchange: Exchange, host: HostState, status: int, content_type: str, body: bytes,
                      admitted: list[Stage]) -> Response:
        """A whole answer: accounted for (durably) before it is sent. A server error (relayed: it
        may have done work) counts against the host, so that one failing at every request leaves
        the rotation instead of drawing it by answering fastest."""
        _record_answer(host, status, self.fleet.routing.failure_threshold)
        exchange.first_byte = time.monotonic()
        exchange.status = status
        if status == 200:
            exchange.usage = _usage(body)
            if exchange.warning:
                body = _with_warning(body, exchange.warning)
        await _settle(exchange, admitted)
        return Response(status=status, body=body, content_type=content_type, headers=list(exchange.response_headers))

    async def settled(self, timeout_s: float = 5.0) -> None:
        """Waits (at most timeout_s) for what requests whose clients left still have to do: their
        answers, then their rows. At shutdown, after the engines' connections are closed, so that
        the rows are written before the store closes."""
        deadline = time.monotonic() + timeout_s
        # Handlers cancelled by the stop run their endings (and hand their answers over) first.
        while (self._handling or self._settling) and time.monotonic() < deadline:
            if self._settling:
                await asyncio.wait(list(self._settling), timeout=max(deadline - time.monotonic(), 0.0))
            else:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the done callbacks of the last ones

    def _keep(self, future: asyncio.Future[Any]) -> None:
        self._settling.add(future)  # held until done: nobody else waits on it
        future.add_done_callback(self._settling.discard)

    def _bill_when_answered(self, exchange: Exchange, host: HostState, fetch: asyncio.Future[_Whole],
                            admitted: list[Stage]) -> None:
        """Takes the stages over from a request whose client left while its whole answer was on its
        way: they end when the engine answers (its usage then known) or fails (usage estimated)."""
        stages = admitted[:]
        admitted.clear()  # the request path's own ending now has nothing left to end

        def settle(done: asyncio.Future[_Whole]) -> None:
            host.end(exchange.estimated_tokens)
            exchange.status, exchange.host = 499, host.name
            error = None if done.cancelled() else done.exception()
            if isinstance(error, UpstreamError):
                host.record_failure(str(error), self.fleet.routing.failure_threshold)
            elif error is None and not done.cancelled():
                status, _, body = done.result()
                _record_answer(host, status, self.fleet.routing.failure_threshold)
                exchange.usage = _usage(body) if status == 200 else None
            for pending in _finish(exchange, stages):  # a commit still to wait on (no journal)
                future = asyncio.ensure_future(pending)
                self._keep(future)

        fetch.add_done_callback(settle)

    async def _relay(self, exchange: Exchange, host: HostState, upstream: BackendResponse,
                     events: AsyncIterator[bytes], first: bytes, admitted: list[Stage]) -> AsyncIterator[bytes]:
        exchange.status = 499  # until the stream ends well
        warning = exchange.warning  # goes into the first chunk
        done = False
        try:
            event = first
            while event:
                if event[:1] == b":":  # a comment: ours carry usage, none reach the client
                    comment = usage_comment(event)
                    if comment is not None:
                        exchange.usage = _comment_usage(comment) or exchange.usage
                    event = await anext(events, b"")
                    continue
                data = event_data(event)
                if warning and data is not None and data[:1] == b"{":
                    data = _with_warning(data, warning)
                    event, warning = b"data: " + data + b"\n\n", None
                if data is not None and _USAGE_OBJECT.search(data):
                    exchange.usage = _usage(data) or exchange.usage
                    if exchange.include_usage or not _NO_CHOICES.search(data):
                        yield event
                elif data is not None and _CONTENT.search(data):
                    exchange.note_content(time.monotonic())
                    yield event
                elif data == b"[DONE]":
                    exchange.status, done = 200, True
                    await _settle(exchange, admitted)  # accounted for before the client sees the end
                    yield event
                else:
                    yield event
                event = await anext(events, b"")
            if not done and host.kind == "llmaas":  # ours always end with it: the stream was cut
                raise UpstreamError(f"{host.name} ended a stream without [DONE]", True)
            if exchange.status == 499:  # ended without [DONE]: a server that does not send it
                exchange.status = 200
        except UpstreamError as exc:
            host.record_failure(str(exc), self.fleet.routing.failure_threshold)
            if done:  # the client has its whole answer: nothing to add after [DONE]
                return
            exchange.status, exchange.error_code = 502, "upstream_stream_error"
            error = GatewayError(502, "The engine failed while streaming; the response is incomplete.",
                                 code="upstream_stream_error", type_="server_error")
            yield b"data: " + _ENCODER.encode(error.body()) + b"\n\n"
        finally:
            upstream.close()
            host.end(exchange.estimated_tokens)
            _finish(exchange, admitted)


class _Retry(Exception):
    pass


async def _abort(host: HostState, tag: str) -> None:
    """Asks an engine of ours to stop the whole answer tagged `tag`; best effort (an engine that
    does not answer finishes the request, which is then billed all the same)."""
    try:
        response = await host.backend.request("POST", f"/internal/abort/{tag}")
        try:
            await response.read()
        finally:
            response.close()
    except (UpstreamError, OSError):
        pass


_Whole = tuple[int, str, bytes]  # a whole answer: status, content type, body


async def _whole_answer(host: HostState, path: str, body: bytes, headers: list[tuple[str, str]]) -> _Whole:
    """One request's whole answer from `host`: a task of its own, so that it runs to its end (and
    its usage is known) even when the client leaves before."""
    upstream = await host.backend.request("POST", path, body, headers)
    try:
        return upstream.status, upstream.headers.get("content-type", "application/json"), await upstream.read()
    finally:
        upstream.close()


def _record_answer(host: HostState, status: int, threshold: int) -> None:
    if status >= 500:
        host.record_failure(f"{host.name} answered {status}", threshold)
    else:
        host.record_success()


def _json_object(body: bytes) -> bool:
    """Whether a 200's body looks like a completion (a JSON object), not HTML or nothing: the same
    test as the native lane's, so both paths retry the same answers."""
    body = body.strip()
    return body[:1] == b"{" and body[-1:] == b"}"


def _with_warning(body: bytes, warning: str) -> bytes:
    """A JSON object with a top-level `warning` field added (a deprecated model's notice)."""
    body = body.rstrip()
    if body[-1:] != b"}":
        return body
    return body[:-1] + b',"warning":' + _ENCODER.encode(warning) + b"}"


def _finish(exchange: Exchange, admitted: list[Stage]) -> list[Awaitable[None]]:
    """Ends every admitted stage, once; returns what they still have to complete."""
    pending = [done for stage in reversed(admitted) if (done := stage.finish(exchange)) is not None]
    admitted.clear()
    return pending


async def _settle(exchange: Exchange, admitted: list[Stage]) -> None:
    """Ends the stages and waits for what they write (the usage row) to be durable."""
    pending = _finish(exchange, admitted)
    if pending:
        await asyncio.gather(*pending)


def _usage(data: bytes) -> Usage | None:
    try:
        return _USAGE.decode(data).usage
    except msgspec.DecodeError:  # not our business to police an engine's body: no usage known
        return None


def _comment_usage(data: bytes) -> Usage | None:
    try:
        c = _USAGE_COMMENT.decode(data)
    except msgspec.DecodeError:  # a malformed comment is ignored, as SSE clients ignore all comments
        return None
    return Usage(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                 total_tokens=c.prompt_tokens + c.completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(c.cached_tokens),
                 completion_tokens_details=CompletionTokensDetails(c.reasoning_tokens))


def _prompt_text(fields: RoutingFields) -> str:
    if fields.messages is not None:
        parts: list[str] = []
        for message in fields.messages:
            if isinstance(message.content, str):
                parts.append(message.content)
            elif message.content:
                parts.extend(p.text for p in message.content if p.text)
        return "\x00".join(parts)
    prompt = fields.prompt
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return prompt[0] if prompt else ""
    # Token ids: a prefix key from their text form, four characters per token for the estimate.
    if isinstance(prompt, list) and _token_ids(prompt):
        return " ".join(map(str, prompt))
    if isinstance(prompt, list) and all(isinstance(p, list) and _token_ids(p) for p in prompt):
        return " ".join(map(str, prompt[0]))
    raise GatewayError(400, "`prompt` must be a string, a list of strings, a list of token ids or a list of lists of "
                            "token ids", param="prompt")


def _check_sizes(fields: RoutingFields) -> None:
    """Sizes the engine would refuse, refused before a stage reserves them: a negative max_tokens
    would reserve negative tokens, and leave the tenant's limits in debt for hours."""
    for name, value in (("max_tokens", fields.max_tokens), ("max_completion_tokens", fields.max_completion_tokens),
                        ("n", fields.n)):
        if value is not None and value < 1:
            raise GatewayError(400, f"{name} must be at least 1, got {value}", param=name)


def _token_ids(items: list[object]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)

