"""How one request samples: the OpenAI parameters plus vLLM's usual extensions."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import InvalidRequestError

_MAX_STOP_CHARS = 1024
_MAX_LOGPROBS = 20
# Below this a temperature is greedy decoding (vLLM's bound): logits divided by a float32 denormal
# overflow to inf and NaN, and the "sample" is garbage.
_GREEDY_BELOW = 1e-5


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16  # None: until the context window is full
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: the sampled token's plus the top k
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        _check(1 <= self.n <= 128, "n must be between 1 and 128", "n")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1", "max_tokens")
        _check(0.0 <= self.temperature <= 100.0, "temperature must be in [0, 100]", "temperature")
        if self.temperature < _GREEDY_BELOW:
            self.temperature = 0.0
        _check(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]", "top_p")
        _check(self.top_k >= 0, "top_k must be -1 (disabled) or a positive integer", "top_k")
        _check(0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]", "min_p")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]", "presence_penalty")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]", "frequency_penalty")
        _check(0.0 < self.repetition_penalty <= 10.0, "repetition_penalty must be in (0, 10]", "repetition_penalty")
        _check(self.logprobs is None or 0 <= self.logprobs <= _MAX_LOGPROBS,
               f"logprobs must be between 0 and {_MAX_LOGPROBS}", "logprobs")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings", "stop")
        _check(len(self.stop) <= 16, "at most 16 stop strings", "stop")
        # Each is looked for in the text's tail at every token: a 100,000-character one made that
        # look the cost of the step.
        _check(all(len(s) <= _MAX_STOP_CHARS for s in self.stop),
               f"a stop string has at most {_MAX_STOP_CHARS} characters", "stop")
        self.logit_bias = dict(self.logit_bias)
        _check(all(isinstance(t, int) and t >= 0 for t in self.logit_bias), "logit_bias keys must be token ids",
               "logit_bias")
        _check(all(-100.0 <= b <= 100.0 for b in self.logit_bias.values()), "logit_bias values must be in [-100, 100]",
               "logit_bias")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise InvalidRequestError(message, param=param)
