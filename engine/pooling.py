"""Embeddings from a decoder: each prompt's final hidden states (the last RMSNorm's output, what
lm_head would read) pooled into one vector, in float32, L2-normalised, as sentence-transformers'
Pooling + Normalize and vLLM do for Qwen3-Embedding and e5-mistral style models.

"last" takes the last prompt position's row; "mean" averages every position's row, summed chunk by
chunk (a prompt computed over several steps) on its Sequence; "cls" takes the first position's row
(BERT-style encoders' [CLS] / <s>). Mean and cls pooling need states a cached prefix would skip, so
such an engine never serves a prompt's prefix from the cache (see LLMEngine).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.loader.errors import ModelLoadError
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

DEFAULT_POOLING = "last"
# sentence-transformers' modes (1_Pooling/config.json) this engine computes, by our names.
_ST_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def folder_pooling(path: str, default: str = DEFAULT_POOLING) -> str:
    """The pooling a sentence-transformers model folder declares, else `default`."""
    file = Path(path) / "1_Pooling" / "config.json"
    raw = _read_json(file)
    if raw is None:
        return default
    chosen = [name for key, name in _ST_MODES.items() if isinstance(raw, dict) and raw.get(key)]
    if len(chosen) != 1:
        modes = sorted(k for k, v in raw.items() if k.startswith("pooling_mode") and v) if isinstance(raw, dict) else []
        raise ModelLoadError(f"{file}: pooling {modes or 'none'} is unsupported (supported: "
                             f"{', '.join(_ST_MODES)}); choose one with --pooling last|mean|cls")
    return chosen[0]


def folder_matryoshka(path: str) -> tuple[int, ...] | None:
    """The shorter embedding sizes a model folder's config.json says it was trained to give (Matryoshka
    representation learning): its `matryoshka_dimensions`, or () for any size where it only says
    `is_matryoshka` (vLLM's keys); None where it says neither, or for a GGUF file."""
    raw = _read_json(Path(path) / "config.json")
    sizes = raw.get("matryoshka_dimensions") if isinstance(raw, dict) else None
    if isinstance(sizes, list) and sizes and all(isinstance(d, int) and d > 0 for d in sizes):
        return tuple(sorted(set(sizes)))
    return () if isinstance(raw, dict) and raw.get("is_matryoshka") is True else None


def _read_json(file: Path) -> object:
    """The file's JSON value, None where there is no such file; ModelLoadError where it is unreadable."""
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{file}: unreadable JSON ({e})") from e


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """A Matryoshka embedding at `dimensions`: its first `dimensions` values, L2-normalised again."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head] if norm > 0 else head


def pool(hidden: torch.Tensor, batch: ScheduledBatch, pooling: str) -> list[tuple[Sequence, torch.Tensor]]:
    """hidden: (T, hidden_size), the batch's rows in its order, before the batch's tokens are counted
    as computed -> (sequence, its unit float32 vector (hidden_size,)) for each sequence whose prompt
    this step completes."""
    done: list[tuple[Sequence, torch.Tensor]] = []
    row = 0
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        rows = hidden[row:row + n]  # (n, hidden_size)
        row += n
        start = seq.num_computed_tokens
        if pooling == "mean":
            part = rows.float().sum(dim=0)
            # From position 0 the sum starts afresh: a preempted sequence recomputes its prompt.
            seq.pooled_sum = part if start == 0 or seq.pooled_sum is None else seq.pooled_sum + part
        elif pooling == "cls" and start == 0:  # the first position's row, kept until the prompt ends
            seq.pooled_sum = rows[0].float()
        if start + n < seq.num_tokens:
            continue
        if pooling == "mean":
            assert seq.pooled_sum is not None, "set above"
            vector = seq.pooled_sum / seq.num_tokens
        elif pooling == "cls":
            assert seq.pooled_sum is not None, "set at position 0"
            vector = seq.pooled_sum
        else:
            vector = rows[-1].float()
        done.append((seq, torch.nn.functional.normalize(vector, dim=0)))
    return done
