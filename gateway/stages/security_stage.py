"""Prompt security on every message a user, tool or document contributes; blocks are 400s with a
stable code that tells an attacker nothing to tune against."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import security
from gateway.fleet.errors import GatewayError
from gateway.fleet.exchange import Exchange


class PolicyOverrides(Protocol):
    """Policies operators set at run time (gateway.tenancy.security_policies): None when unset."""

    def get(self, tenant: str | None) -> security.Policy | None: ...


# A model's tokenizer, where the gateway has one (`llmaas serve`'s in-process engine): token ids ->
# their text, special tokens written out.
Detokenize = Callable[[list[int]], str]


class SecurityStage:
    def __init__(self, history: security.History | None = None, default_policy: security.Policy | None = None,
                 tenant_policies: Mapping[str, security.Policy] | None = None,
                 overrides: PolicyOverrides | None = None, detokenizers: Mapping[str, Detokenize] | None = None) -> None:
        self.history = history if history is not None else security.History()
        self.default_policy = default_policy or security.Policy()
        self.tenant_policies = dict(tenant_policies or {})
        self.overrides = overrides
        self.detokenizers = dict(detokenizers or {})

    def policy(self, tenant: str | None) -> security.Policy:
        """The operator's policy for the tenant (admin API), else the config's, else the default;
        read on every request, so a change applies from the tenant's next request."""
        if self.overrides is not None:
            chosen = self.overrides.get(tenant)
            if chosen is not None:
                return chosen
        return self.tenant_policies.get(tenant or "", self.default_policy)

    async def admit(self, exchange: Exchange) -> None:
        principal = exchange.state.get("principal")
        tenant = principal.tenant if principal is not None else None
        policy = self.policy(tenant)
        field = exchange.prompt_field  # what the engine reads; a body's other fields it ignores
        prompt = exchange.payload().get(field)
        if field == "messages":
            messages = prompt if isinstance(prompt, list) else []
            verdict = security.check([m for m in messages if isinstance(m, dict)], tenant=tenant, policy=policy,
                                     history=self.history)
        elif _token_ids(prompt):
            text = _read_token_ids(prompt, self.detokenizers.get(exchange.model))
            verdict = _unscannable(policy) if text is None else \
                security.check_text(text, tenant=tenant, policy=policy, history=self.history)
        else:
            verdict = security.check_text(_prompt_texts(prompt), tenant=tenant, policy=policy, history=self.history)
        exchange.state["verdict"] = verdict.action
        exchange.state["security_rules"] = verdict.rules
        exchange.state["security_rules_version"] = security.rules_version()
        if verdict.blocked:
            exchange.state["blocked"] = True
            if verdict.rules == (UNSCANNABLE_RULE,):
                raise GatewayError(400, UNSCANNABLE_MESSAGE, code="prompt_not_scannable", param=field)
            raise GatewayError(400, security.BLOCK_MESSAGE, code=security.BLOCK_CODE)

    def finish(self, exchange: Exchange) -> None:
        return None


# A completions prompt (or embeddings input) of token ids is read with the model's tokenizer where
# the gateway has one; a fleet's gateway holds none, so it cannot read what they say (an injection, a
# forged `<|im_start|>system` turn by its special ids), and the structure layer's mode decides: on
# refuses them, flag_only lets them through flagged, off lets them through.
UNSCANNABLE_RULE = "structure.token_ids"
UNSCANNABLE_MESSAGE = ("Prompt security reads text: send the prompt as text. Prompts of token ids are refused "
                       "under this key's security policy.")


def _token_ids(prompt: object) -> bool:
    return isinstance(prompt, list) and any(isinstance(p, (int, list)) for p in prompt)


def _read_token_ids(prompt: list, detokenize: Detokenize | None) -> str | None:
    """The prompts' text, or None when it cannot be read here (no tokenizer, ids it does not know)."""
    if detokenize is None:
        return None
    lists = prompt if all(isinstance(p, list) for p in prompt) else [prompt]
    try:
        return "\n".join(detokenize(ids) for ids in lists)
    except Exception:  # ids out of the vocabulary, a bad shape: the engine refuses those, unread
        return None


def _unscannable(policy: security.Policy) -> security.Verdict:
    mode = policy.mode("structure")
    if mode == "off":
        return security.Verdict("allow", 0.0)
    return security.Verdict("block" if mode == "on" else "flag", 1.0, (UNSCANNABLE_RULE,))  # one whole rule


def _prompt_texts(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""
