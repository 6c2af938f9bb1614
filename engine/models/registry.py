"""Model families by architecture name; each family joins with one file and one line here."""
from __future__ import annotations

from torch import nn

from engine.config import ModelConfig
from engine.models.gemma3 import Gemma3ForCausalLM
from engine.models.llama import LlamaForCausalLM
from engine.models.xlm_roberta import XLMRobertaModel

MODEL_FAMILIES: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    # Llama with q/k/v biases (Qwen2, Qwen2.5) or per-head q/k norms (Qwen3): ModelConfig's flags.
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "granite": LlamaForCausalLM,  # Llama with four scales (ModelConfig's multipliers)
    "phi3": LlamaForCausalLM,  # Phi-3 and Phi-4: Llama, its projections stored fused (loader/fused_layout.py)
    # Mixtures of experts: each MLP is a SparseMoeBlock (engine/models/moe.py; ModelConfig's num_experts).
    "mixtral": LlamaForCausalLM,
    "qwen3moe": LlamaForCausalLM,
    "granitemoe": LlamaForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    # BERT-style encoders, embedding models only (ModelConfig.causal False)
    "xlm_roberta": XLMRobertaModel,
    "bert": XLMRobertaModel,
}


def model_class(config: ModelConfig) -> type[nn.Module]:
    try:
        return MODEL_FAMILIES[config.architecture]
    except KeyError:
        known = ", ".join(sorted(MODEL_FAMILIES))
        raise ValueError(f"unsupported architecture {config.architecture!r} (supported: {known})") from None
