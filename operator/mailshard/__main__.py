"""Command line of the operator package: `python -m mailshard --help`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailshard import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailshard",
        description="Mailshard: a Kubernetes operator for sharded, highly available IMAP mail storage.",
    )
    parser.add_argument("--version", action="version", version=f"mailshard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the operator against the current kube context")
    run.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    run.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    run.add_argument("--standalone", action="store_true", help="no peering: this instance always acts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "run":
        from mailshard.runner import run_operator

        return run_operator(
            namespaces=args.namespace,
            liveness=args.liveness,
            standalone=args.standalone,
        )
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
