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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrk-ai-inference", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    http = sub.add_parser("http", help="standalone HTTP microservice")
    _add_config_flags(http)
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
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        setup_logging()
        get_logger("cli").error("configuration error", extra={"error": str(exc)})
        return 2
    setup_logging(settings.debug)
    from .http.server import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
