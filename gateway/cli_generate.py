"""`llmaas generate`: one prompt in, the model's answer streamed to the terminal."""
from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "smollm2:135m"


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="generate text for one prompt, streamed to stdout")
    p.add_argument("prompt", help="the user message (or raw text with --raw); '-' reads stdin")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name, .gguf file or Hugging Face folder")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--system", default=None, help="a system message (chat mode)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from engine.config import EngineConfig
    from engine.errors import EngineError
    from engine.llm_engine import LLMEngine
    from engine.loader.errors import ModelLoadError
    from engine.sampling_params import SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed)
        engine = LLMEngine(args.model, EngineConfig(dtype=getattr(torch, args.dtype)))
        tok = engine.tokenizer
        if args.raw:
            prompt_ids = tok.encode(prompt)
        else:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": prompt})
            prompt_ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True),
                                    add_special_tokens=False)
        engine.add_request("cli", prompt_ids, params)
        while engine.has_unfinished_requests():
            for output in engine.step():
                for delta in output.deltas:
                    sys.stdout.write(delta.text)
                sys.stdout.flush()
    except (EngineError, ModelLoadError, ValueError) as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    sys.stdout.write("\n")
    return 0
