"""`llmaas gateway --config FILE`: the front door of a fleet of engine hosts."""

from __future__ import annotations

import argparse
import sys
import tomllib

from gateway.cli_tokens import store_errors


def add_gateway_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("gateway", help="serve the OpenAI API in front of the engine hosts of a config file")
    p.add_argument("--config", required=True, help="TOML file: [server], [routing], [[models]] with their hosts")
    p.add_argument("--host", help="listen address (overrides [server] host)")
    p.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    p.set_defaults(run=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    from gateway.fleet.config import ConfigError, load_config
    from gateway.gateway_server import Gateway
    from gateway.http import ServerLimits, run

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        # The store, tiers and admin token are read here: their errors come before "gateway at".
        gateway = Gateway(config)
        router = gateway.router()
        lane, lane_state = gateway.native_lane()
    except (OSError, ValueError, tomllib.TOMLDecodeError, *store_errors()) as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"llmaas: gateway for {', '.join(gateway.fleet.model_names)} at http://{host}:{port}/v1 "
              f"(native lane: {lane_state})", flush=True)
        limits = ServerLimits(cors_origins=tuple(config.server.cors_allowed_origins))
        run(router, host, port, limits, certfile=config.server.certfile, keyfile=config.server.keyfile,
            on_startup=gateway.start, on_shutdown=gateway.stop, connections=gateway.metrics.connections, lane=lane)
    except (OSError, ValueError) as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    return 0
