"""Command line of the operator package: `python -m mailshard --help`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mailshard import __version__
from mailshard.crdgen import REGENERATE_HINT, check_crds, write_crds


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
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint (empty: none)")
    run.add_argument("--standalone", action="store_true", help="no peering: this instance always acts")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument(
        "--kubeconfig", help="kubeconfig to use outside a cluster (default: $KUBECONFIG or ~/.kube/config)"
    )
    crds = commands.add_parser("crds", help="write or check the CustomResourceDefinitions generated from the models")
    mode = crds.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DIR", type=Path, help="(re)write the CRD files into DIR")
    mode.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if the CRD files in DIR differ from the models")
    return parser


def crds_command(*, write: Path | None, check: Path | None) -> int:
    if write is not None:
        for path in write_crds(write):
            print(f"wrote {path}")
        return 0
    assert check is not None  # argparse requires one of the two
    drifts = check_crds(check)
    for drift in drifts:
        print(drift.describe(), file=sys.stderr)
    if drifts:
        print(f"CRDs in {check} are out of date with the models; run `{REGENERATE_HINT}`", file=sys.stderr)
        return 1
    print(f"CRDs in {check} match the models")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "run":
        from mailshard.runner import run_operator

        if args.kubeconfig:
            # Both kopf's login and our API client read it from the environment.
            os.environ["KUBECONFIG"] = args.kubeconfig
        return run_operator(
            namespaces=args.namespace,
            liveness=args.liveness,
            standalone=args.standalone,
            verbose=args.verbose,
        )
    if args.command == "crds":
        return crds_command(write=args.write, check=args.check)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
