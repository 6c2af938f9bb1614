"""The `llmaas` command line."""
from __future__ import annotations

import argparse
import sys

from gateway.cli_gateway import add_gateway_parser
from gateway.cli_bench import add_bench_parsers
from gateway.cli_generate import add_generate_parser
from gateway.cli_serve import add_serve_parsers
from gateway.cli_tokens import add_tokens_parsers


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
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
