"""The language model inside a vision-language checkpoint (Mistral-Small 3.1/3.2, Gemma 3 4B and up),
served as text only: its config.json's text_config, its tensors under the causal LM's names, the vision
tower and projector left out.

Checkpoints name the language model language_model.model.* with language_model.lm_head (transformers 4's
layout, the published Mistral-Small files) or model.language_model.* with lm_head (transformers 4.52 on).
"""
from __future__ import annotations

import torch

# Vision-language architecture -> the causal LM its language model is.
TEXT_ARCHITECTURES = {"Mistral3ForConditionalGeneration": "MistralForCausalLM"}
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_RENAMED = (("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."))


def is_wrapper(raw: dict) -> bool:
    """Whether config.json is a vision-language checkpoint's this module reads the language model of."""
    return any(a in TEXT_ARCHITECTURES for a in raw.get("architectures") or [])


def text_config(raw: dict, text_architecture: str) -> dict:
    """config.json's text_config as the text model's own config.json would read."""
    text = dict(raw.get("text_config") or {})
    text["architectures"] = [text_architecture]
    for key in ("bos_token_id", "eos_token_id", "tie_word_embeddings"):
        if text.get(key) is None and raw.get(key) is not None:
            text[key] = raw[key]
    return text


def language_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The language model's tensors under the causal LM's names; the vision side's are dropped. Names
    already the causal LM's are kept."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.startswith(_VISION_PREFIXES):
            continue
        for prefix, replacement in _RENAMED:
            if name.startswith(prefix):
                name = replacement + name.removeprefix(prefix)
                break
        out[name] = tensor
    return out
