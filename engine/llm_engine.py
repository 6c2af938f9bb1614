"""The synchronous engine: add requests, step, abort. One step = schedule, execute, postprocess."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch

from engine.block_manager import BlockManager
from engine.loader.errors import ModelLoadError
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.energy import EnergySource, StepEnergy, open_energy_source
from engine.energy_sampler import SAMPLE_INTERVAL_S, SampledMeter
from engine.errors import InvalidRequestError, PromptTooLongError
from engine.kernels import ops
from engine.loader.load import load_model
from engine.memory import HeapTrimmer, release_free_heap
from engine.model_runner import ModelRunner
from engine.outputs import RequestOutput, SequenceDelta, TokenLogprob, Usage
from engine.pooling import folder_matryoshka, folder_pooling
from engine.sampler import SamplerOutput
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence
from engine.stats import EngineStats


@dataclass(slots=True)
class EngineLoad:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks held by sequences
    num_free_blocks: int
    num_blocks: int


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    seqs: list[Sequence] = field(default_factory=list)
    energy_joules: float | None = None  # its share of the steps it was in; None when no meter


class LLMEngine:
    def __init__(self, model: str, config: EngineConfig | None = None, energy: EnergySource | None = None) -> None:
        """energy: the meter to charge requests from; by default the device's (engine.energy)."""
        self.config = config or EngineConfig()
        c = self.config
        keep_q4_1 = c.quantized_decode and ops.q4_1_linear_runs(c.dtype, c.device)
        loaded = load_model(model, c.dtype, c.load_format, c.device, keep_q4_1, lm_head=c.task != "embed")
        # An embedding engine's pooling (engine/pooling.py); None for a generating one.
        if not loaded.config.causal and c.task != "embed":
            raise ModelLoadError(f"{model}: an encoder ({loaded.config.architecture}) serves embeddings only: "
                                 "--task embed")
        default_pooling = "last" if loaded.config.causal else "cls"
        self.pooling = (c.pooling or folder_pooling(loaded.path, default_pooling)) if c.task == "embed" else None
        # The shorter sizes its embeddings can be asked for: () any, None none (engine/pooling.py).
        self.matryoshka_dimensions = (() if c.matryoshka else folder_matryoshka(loaded.path)) if self.pooling else None
        self.model_name = model
        self.model_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.runner = ModelRunner(loaded.config, loaded.weights, self.config)
        del loaded
        release_free_heap()
        bs = self.config.block_size
        self.max_model_len = min(self.config.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings, self.runner.num_blocks * bs)
        # Mean and first-token pooling read positions a cached prefix would skip; an encoder's states
        # depend on the whole prompt.
        encoder = not self.model_config.causal
        prefix_caching = self.config.enable_prefix_caching and self.pooling in (None, "last") and not encoder
        self.block_manager = BlockManager(self.runner.num_blocks, bs, prefix_caching)
        budget = self.config.max_num_batched_tokens
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs,
                                   max(budget, self.max_model_len) if encoder else budget, whole_prompts=encoder)
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids or self.model_config.eos_token_ids)
        self._requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()
        self.stats = EngineStats()  # written by the step thread only; read via stats_snapshot()
        self._heap_trimmer = HeapTrimmer()
        self.energy_source = energy or _device_energy_source(self.runner.device)
        self._energy = StepEnergy(self.energy_source.meter) if self.energy_source.meter is not None else None
        if self._energy is not None:
            self.stats.energy_joules = 0.0

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams, priority: int = 0) -> None:
        if self.pooling is not None:
            raise InvalidRequestError(f"the model {self.model_name!r} serves embeddings only", param="model")
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running", param="request_id")
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(prompt_ids, params)
        limit = self.max_model_len if params.max_tokens is None else len(prompt_ids) + params.max_tokens
        request = _Request(request_id, prompt_ids, energy_joules=0.0 if self._energy is not None else None)
        arrival = next(self._arrivals)
        for index in range(params.n):
            seq = Sequence(seq_id=next(self._seq_ids), request_id=request_id, index=index,
                           token_ids=list(prompt_ids), num_prompt_tokens=len(prompt_ids), params=params,
                           max_num_tokens=limit, priority=priority, arrival_order=arrival,
                           wait_for=request.seqs[0] if index else None)
            if params.seed is not None:
                seq.generator = torch.Generator(device=self.runner.device).manual_seed(hash((params.seed, index)))
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens,
                                                     params.stop, params.include_stop_str_in_output)
            request.seqs.append(seq)
            self.scheduler.add(seq)
        self._requests[request_id] = request

    def add_embedding_request(self, request_id: str, prompt: str | list[int], priority: int = 0) -> None:
        """A prompt to embed: computed like any prompt (chunked, batched), then pooled; its one
        output carries the vector (RequestOutput.embedding) and usage."""
        if self.pooling is None:
            raise InvalidRequestError(f"the model {self.model_name!r} does not serve embeddings "
                                      "(start its engine with --task embed)", param="model")
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running", param="request_id")
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(prompt_ids, _EMBED_PARAMS)
        request = _Request(request_id, prompt_ids, energy_joules=0.0 if self._energy is not None else None)
        seq = Sequence(seq_id=next(self._seq_ids), request_id=request_id, index=0, token_ids=prompt_ids,
                       num_prompt_tokens=len(prompt_ids), params=_EMBED_PARAMS, max_num_tokens=len(prompt_ids),
                       priority=priority, arrival_order=next(self._arrivals))
        request.seqs.append(seq)
        self.scheduler.add(seq)
        self._requests[request_id] = request

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request at once and frees its blocks; returns its last output with usage
        (generated tokens are counted), or None if it was unknown or already done."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        deltas = []
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish_reason = "abort"
                self.stats.record_finish("abort")
                deltas.append(SequenceDelta(seq.index, [], "", "abort"))
        self._rest_meter_if_idle()
        return RequestOutput(request_id, deltas, finished=True, usage=_usage(request))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def load(self) -> EngineLoad:
        bm = self.block_manager
        return EngineLoad(len(self.scheduler.running), len(self.scheduler.waiting), bm.usage(),
                          bm.num_free_blocks, bm.num_blocks)

    def stats_snapshot(self) -> EngineStats:
        """A copy of the counters, safe to read from any thread (see engine.stats)."""
        snap = self.stats.copy()
        bm = self.block_manager
        snap.num_preemptions = self.scheduler.num_preemptions
        snap.prefix_query_tokens, snap.prefix_hit_tokens = bm.num_prefix_query_tokens, bm.num_prefix_hit_tokens
        snap.num_running, snap.num_waiting = len(self.scheduler.running), len(self.scheduler.waiting)
        snap.kv_cache_usage = bm.usage()
        return snap

    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch:
            return []
        if self._energy is not None:
            self._energy.start_step()
        outputs, num_sampled = self._generate(batch) if self.pooling is None else (self._embed(batch), 0)
        self._rest_meter_if_idle()
        self._heap_trimmer.step()
        self.stats.record_step(time.perf_counter() - started, len(batch.seqs), batch.total_tokens, num_sampled)
        return outputs

    def _generate(self, batch: ScheduledBatch) -> tuple[list[RequestOutput], int]:
        """Runs a step that samples; returns its outputs and how many sequences sampled."""
        sampled_seqs, sampled = self.runner.execute(batch)
        self.scheduler.after_step(batch)
        token_ids = sampled.token_ids.tolist() if sampled is not None else []  # waits for the device
        self._end_energy(batch)
        if sampled is None:
            return [], 0
        return self._postprocess(sampled_seqs, sampled, token_ids), len(sampled_seqs)

    def _embed(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Runs a step of an embedding engine; each prompt it completes finishes with its vector."""
        assert self.pooling is not None, "an embedding engine's step"
        pooled = self.runner.execute_pooling(batch, self.pooling)
        self.scheduler.after_step(batch)
        vectors = torch.stack([v for _, v in pooled]).tolist() if pooled else []  # waits for the device
        self._end_energy(batch)
        outputs = []
        for (seq, _), vector in zip(pooled, vectors):
            seq.pooled_sum = None
            self.stats.prompt_tokens += seq.num_prompt_tokens - seq.num_cached_prompt_tokens
            self.stats.record_finish("stop")
            self.scheduler.finish(seq)
            request = self._requests.pop(seq.request_id)
            outputs.append(RequestOutput(seq.request_id, [], finished=True, usage=_usage(request), embedding=vector))
        return outputs

    def _end_energy(self, batch: ScheduledBatch) -> None:
        if self._energy is not None:
            self._charge_energy(batch, self._energy.end_step())

    def _charge_energy(self, batch: ScheduledBatch, joules: float) -> None:
        """Splits a step's energy between its requests by the tokens each computed in it (prompt
        chunk or decode token), before any of them finishes and reports its usage."""
        assert self.stats.energy_joules is not None, "set to 0.0 with the meter"
        self.stats.energy_joules += joules
        per_token = joules / batch.total_tokens
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            request = self._requests[seq.request_id]
            assert request.energy_joules is not None, "requests carry energy while a meter runs"
            request.energy_joules += per_token * n

    def _rest_meter_if_idle(self) -> None:
        if self._energy is not None and not self.scheduler.has_unfinished():
            self._energy.idle()

    def _postprocess(self, seqs: list[Sequence], sampled: SamplerOutput, token_ids: list[int]) -> list[RequestOutput]:
        logprobs = _logprob_rows(sampled, seqs)
        outputs: dict[str, RequestOutput] = {}
        for seq, token_id, logprob in zip(seqs, token_ids, logprobs):
            delta = self._append_token(seq, token_id, logprob)
            if seq.num_tokens == seq.num_prompt_tokens + 1:  # its first token: the prompt is done
                self.stats.prompt_tokens += seq.num_prompt_tokens - seq.num_cached_prompt_tokens
            request = self._requests[seq.request_id]
            out = outputs.get(seq.request_id)
            if out is None:
                out = outputs[seq.request_id] = RequestOutput(seq.request_id, [])
            out.deltas.append(delta)
            if delta.finish_reason is not None:
                self.stats.record_finish(delta.finish_reason)
                self.scheduler.finish(seq)
                if all(s.is_finished for s in request.seqs):
                    out.finished = True
                    out.usage = _usage(request)
                    del self._requests[seq.request_id]
        return list(outputs.values())

    def _append_token(self, seq: Sequence, token_id: int, logprob: TokenLogprob | None) -> SequenceDelta:
        params = seq.params
        seq.token_ids.append(token_id)
        if logprob is not None:
            seq.logprobs.append(logprob)
        text = ""
        if token_id in self.eos_token_ids and not params.ignore_eos:
            seq.finish_reason = "stop"
        elif token_id in params.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token_id
        else:
            text = seq.detokenizer.append([token_id])
            if seq.detokenizer.stopped_by is not None:
                seq.finish_reason, seq.stop_reason = "stop", seq.detokenizer.stopped_by
        if seq.finish_reason is None and (seq.num_tokens >= seq.max_num_tokens or seq.num_tokens >= self.max_model_len):
            seq.finish_reason = "length"
        if seq.finish_reason is not None and seq.detokenizer.stopped_by is None:
            text += seq.detokenizer.flush()
        return SequenceDelta(seq.index, [token_id], text, seq.finish_reason, seq.stop_reason,
                             [logprob] if logprob is not None else None)

    def _check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        vocab = self.model_config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        if params.logit_bias and max(params.logit_bias) >= vocab:
            raise InvalidRequestError(f"logit_bias token ids must be in [0, {vocab})", param="logit_bias")
        n = len(prompt_ids)
        # A generated token needs a position after the prompt; an embedding's prompt may fill the context.
        if n > self.max_model_len or (n == self.max_model_len and self.pooling is None):
            raise PromptTooLongError(f"this model's maximum context length is {self.max_model_len} tokens; "
                                     f"the prompt has {n} tokens", param="messages")
        if params.max_tokens is not None and n + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(f"this model's maximum context length is {self.max_model_len} tokens; "
                                     f"{n} prompt tokens + max_tokens {params.max_tokens} exceed it", param="max_tokens")


# An embedding sequence's: it samples nothing, and its prompt is all it may hold (max_num_tokens).
_EMBED_PARAMS = SamplingParams(max_tokens=None)


def _usage(request: _Request) -> Usage:
    first = request.seqs[0]
    return Usage(prompt_tokens=len(request.prompt_token_ids), cached_tokens=first.num_cached_prompt_tokens,
                 completion_tokens=sum(s.num_output_tokens for s in request.seqs),
                 energy_joules=request.energy_joules)


def _device_energy_source(device: torch.device) -> EnergySource:
    """The device's meter; NVML's behind a sampling thread, since one read costs a decode step."""
    uuid = f"GPU-{torch.cuda.get_device_properties(device).uuid}" if device.type == "cuda" else None
    source = open_energy_source(device.type, uuid)
    if source.meter is not None and source.meter.kind == "nvml":
        return EnergySource(SampledMeter(source.meter), f"{source.detail}, sampled every {SAMPLE_INTERVAL_S} s")
    return source


def _logprob_rows(sampled: SamplerOutput, seqs: list[Sequence]) -> list[TokenLogprob | None]:
    if sampled.logprobs is None:
        return [None] * len(seqs)
    chosen = sampled.logprobs.tolist()
    ids = sampled.token_ids.tolist()
    top_ids = sampled.top_token_ids.tolist() if sampled.top_token_ids is not None else None
    top_lps = sampled.top_logprobs.tolist() if sampled.top_logprobs is not None else None
    rows: list[TokenLogprob | None] = []
    for row, seq in enumerate(seqs):
        k = seq.params.logprobs
        if k is None:
            rows.append(None)
            continue
        top = list(zip(top_ids[row][:k], top_lps[row][:k])) if top_ids and top_lps and k else []
        rows.append(TokenLogprob(ids[row], chosen[row], top))
    return rows
