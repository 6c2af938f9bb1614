"""The `llmaas` command line."""
from __future__ import annotations

import argparse
import sys
import tomllib

from gateway.cli_gateway import add_gateway_parser
from gateway.cli_bench import add_bench_parsers
from gateway.cli_generate import add_generate_parser
from gateway.cli_serve import add_serve_parsers
from gateway.cli_tokens import CommandError, add_tokens_parsers, store_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmaas", description="Sovereign LLM as a Service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(commands)
    add_serve_parsers(commands)
    add_bench_parsers(commands)
    add_gateway_parser(commands)
    add_tokens_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (OSError, tomllib.TOMLDecodeError, CommandError, *store_errors()) as exc:
        # A file that is not there or not a database, a disk that refuses a write, a database server
        # that cannot be reached: said, not traced.
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
