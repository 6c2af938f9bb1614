"""`llmaas engine` (one model behind the OpenAI API) and `llmaas serve` (the built-in model, for now)."""

from __future__ import annotations

import argparse
import sys

from gateway.cli_generate import DEFAULT_MODEL


def add_serve_parsers(commands: argparse._SubParsersAction) -> None:
    engine = commands.add_parser("engine", help="serve one model over the OpenAI-compatible API")
    engine.add_argument("--model", required=True, help="catalog name, .gguf file or Hugging Face folder")
    engine.add_argument("--port", type=int, required=True)
    _add_common(engine, host="127.0.0.1")
    engine.set_defaults(run=run_engine)

    serve = commands.add_parser("serve", help=f"serve the built-in model ({DEFAULT_MODEL}) on the OpenAI API")
    serve.add_argument("--port", type=int, default=8000)
    _add_common(serve, host="127.0.0.1")
    serve.set_defaults(run=run_engine, model=DEFAULT_MODEL)


def _add_common(p: argparse.ArgumentParser, host: str) -> None:
    p.add_argument("--host", default=host)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="bfloat16 runs the C++ bf16 kernels (several times faster on CPU)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="most sequences decoded together")
    p.add_argument("--kv-cache-mb", type=int, default=256, help="memory for the KV cache, in MiB")


def run_engine(args: argparse.Namespace) -> int:
    # Imported here so that `llmaas --help` does not pay for torch.
    import torch

    from engine.config import EngineConfig
    from engine.errors import EngineError
    from engine.loader.errors import ModelLoadError
    from gateway.engine_server import build_router, load_engine
    from gateway.http import run

    config = EngineConfig(dtype=getattr(torch, args.dtype), max_num_seqs=args.max_num_seqs,
                          kv_cache_bytes=args.kv_cache_mb * 1024 * 1024)
    try:
        engine = load_engine(args.model, config)
    except (EngineError, ModelLoadError, ValueError) as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    try:
        router = build_router(engine, [args.model])
        print(f"llmaas: serving {args.model} at http://{args.host}:{args.port}/v1", flush=True)
        run(router, args.host, args.port)
    except OSError as exc:  # the port is taken, or the host is not ours
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    return 0
