"""``wrk-ai-inference``: the command line entry point.

Every config key is also a flag (``--max-concurrent-inferences 4``), so scripts
and tests can start any configuration without writing files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .config import camel_to_kebab, coerce_text, config_keys, load_settings
from .errors import ConfigError
from .logs import get_logger, setup_logging


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="DIR", help="folder holding common.json")
    for key in config_keys():
        parser.add_argument(f"--{camel_to_kebab(key)}", dest=f"cfg_{key}", metavar="VALUE")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name[4:]: coerce_text(name[4:], value) for name, value in vars(args).items()
            if name.startswith("cfg_") and value is not None}


def _add_dht_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="HOST:PORT[,HOST:PORT...] or 'public'")
    parser.add_argument("--store-dir", help="keys and model drives (a Corestore)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrk-ai-inference", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    http = sub.add_parser("http", help="standalone HTTP microservice")
    _add_dht_flags(http)
    _add_config_flags(http)
    rack = sub.add_parser("rack", help="rack worker behind Hyperswarm RPC")
    rack.add_argument("--rack", required=True, help="rack name: keys live in <store-dir>/<rack>")
    rack.add_argument("--env", default="development")
    _add_dht_flags(rack)
    rack.add_argument("--status-dir")
    rack.add_argument("--announce-interval", type=int, metavar="MS")
    _add_config_flags(rack)
    publish = sub.add_parser("publish", help="put model folders on a Hyperdrive and seed it")
    publish.add_argument("dirs", nargs="+", metavar="DIR", help="model folders (model.json)")
    _add_dht_flags(publish)
    publish.add_argument("--config", metavar="DIR", help="folder holding facs/net.config.json")
    publish.add_argument("--block-size", type=int, metavar="BYTES",
                         help="bytes per block of the files it writes (default 1 MiB; "
                         "4096 to 8 MiB)")
    seed = sub.add_parser("seed", help="keep serving this store's drives")
    seed.add_argument("--key", action="append", default=[], help="another drive to serve")
    _add_dht_flags(seed)
    seed.add_argument("--config", metavar="DIR", help="folder holding facs/net.config.json")
    testnet = sub.add_parser("testnet", help="a local HyperDHT testnet on 127.0.0.1")
    testnet.add_argument("--nodes", type=int, default=3)
    testnet.add_argument("--host", default="127.0.0.1", help="the address its nodes bind")
    examples = sub.add_parser("examples", help="build the example models")
    examples.add_argument("--out", default="examples/models")
    examples.add_argument("--force", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "examples":
        setup_logging()
        from .examples import build_all

        build_all(args.out, force=args.force)
        return 0
    if args.command == "testnet":
        return _testnet(args.nodes, args.host)
    if args.command in ("publish", "seed"):
        return _publish(args)
    try:
        settings = load_settings(args.config, _overrides(args))
        net = _net_config(args)
        _check_repository(settings.model_repository, net)
    except ConfigError as exc:
        setup_logging()
        get_logger("cli").error("configuration error", extra={"error": str(exc)})
        return 2
    setup_logging(settings.debug)
    _tune_interpreter()
    if args.command == "rack":
        from .rpc.server import serve_rack

        serve_rack(settings, net, args.rack, args.env)
        return 0
    from .http.server import serve

    serve(settings, net)
    return 0


def _check_repository(repository: str, net: Any) -> None:
    from .models.drive_repository import drive_location

    if drive_location(repository) is not None and not net.dht_opts.bootstrap:
        raise ConfigError(f"modelRepository {repository!r} is a Hyperdrive: give --bootstrap "
                          "HOST:PORT (and --store-dir DIR) so the worker can reach it")


def _publish(args: argparse.Namespace) -> int:
    from .p2p.publish import run_publisher

    setup_logging()
    try:
        net = _net_config(args)
        net.bootstrap_for_sidecar()  # a publisher with no DHT is a mistake: say so now
    except ConfigError as exc:
        get_logger("cli").error("configuration error", extra={"error": str(exc)})
        return 2
    return run_publisher(net, getattr(args, "dirs", []), getattr(args, "key", []),
                         getattr(args, "block_size", None))


def _tune_interpreter() -> None:
    """Two process-wide settings that the request path measurably depends on.

    Long-lived objects made at start (modules, config) are frozen out of collection.
    The collection thresholds stay Python's: raising them let garbage pile up in the
    older generations, and the worker's memory grew under `make soak`.

    The GIL switch interval is shorter than Python's: a runtime thread that finishes a
    batch needs the GIL for a moment to hand the outputs back and to start the next run,
    and under load the event loop holds it until the interval forces a switch, so the
    runtime would sit idle between batches. docs/performance.md has the measurements.
    """
    import gc

    gc.freeze()
    sys.setswitchinterval(0.001)


def _net_config(args: argparse.Namespace) -> Any:
    from .p2p.netconfig import load_net_config

    boot = args.bootstrap
    bootstrap: list[str] | str | None = None
    if boot is not None:
        bootstrap = boot if boot == "public" else [b.strip() for b in boot.split(",") if b]
    return load_net_config(args.config, {"bootstrap": bootstrap, "storeDir": args.store_dir,
                                         "statusDir": getattr(args, "status_dir", None),
                                         "announceInterval": getattr(args, "announce_interval",
                                                                     None)})


def _testnet(nodes: int, host: str) -> int:
    import os

    from .errors import InferenceError
    from .p2p.sidecar import node_binary, node_dir

    if nodes < 2:
        setup_logging()
        get_logger("cli").error("a testnet needs at least 2 nodes (one cannot announce)")
        return 2
    try:
        node, folder = node_binary(), node_dir()
    except InferenceError as exc:
        setup_logging()
        get_logger("cli").error("cannot start the testnet", extra={"error": exc.message})
        return 2
    os.execv(node, [node, str(folder / "testnet.js"), str(nodes), host])


if __name__ == "__main__":
    sys.exit(main())
