"""Command line of the operator package: `python -m mailshard --help`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mailshard import __version__
from mailshard.chartgen import DEFAULT_CHART, check_chart, default_chart, write_chart
from mailshard.crdgen import REGENERATE_HINT, check_crds, check_reference, write_crds, write_reference
from mailshard.runner import RANDOM_PRIORITY, peering_priority


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
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering: this instance always acts")
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through the ClusterKopfPeering (or, with --namespace, KopfPeering) NAME: "
        "one acts, the others stand by",
    )
    run.add_argument(
        "--priority",
        type=_priority,
        help="peering priority: an integer, or `random` (the default with --peering) so that identical replicas differ",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument(
        "--metrics-address", default="", help="HOST:PORT for Prometheus metrics, e.g. 0.0.0.0:9090 (empty: none)"
    )
    run.add_argument(
        "--kubeconfig", help="kubeconfig to use outside a cluster (default: $KUBECONFIG or ~/.kube/config)"
    )
    crds = commands.add_parser("crds", help="write or check the CustomResourceDefinitions generated from the models")
    mode = crds.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DIR", type=Path, help="(re)write the CRD files into DIR")
    mode.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if the CRD files in DIR differ from the models")
    crds.add_argument(
        "--chart",
        metavar="CHART",
        type=Path,
        help="the Helm chart whose generated templates (CRDs, RBAC rules) are written or checked too "
        f"(default: DIR/../{DEFAULT_CHART})",
    )
    return parser


def _priority(value: str) -> str:
    try:
        peering_priority(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer nor {RANDOM_PRIORITY!r}: {value!r}") from None
    return value


def crds_command(*, write: Path | None, check: Path | None, chart: Path | None = None) -> int:
    if write is not None:
        for path in [*write_crds(write), *write_chart(chart or default_chart(write)), write_reference(write)]:
            print(f"wrote {path}")
        return 0
    assert check is not None  # argparse requires one of the two
    drifts = [*check_crds(check), *check_chart(chart or default_chart(check)), *check_reference(check)]
    for drift in drifts:
        print(drift.describe(), file=sys.stderr)
    if drifts:
        print(
            f"CRDs in {check} or the chart's generated templates are out of date with the models; "
            f"run `{REGENERATE_HINT}`",
            file=sys.stderr,
        )
        return 1
    print(f"CRDs in {check} and the chart's generated templates match the models")
    return 0


def _resolve_priority(value: str | None, *, peering: str | None) -> int | None:
    if value is None and peering is not None:
        value = RANDOM_PRIORITY
    return None if value is None else peering_priority(value)


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
            peering=args.peering,
            priority=_resolve_priority(args.priority, peering=args.peering),
            verbose=args.verbose,
            metrics_address=args.metrics_address,
        )
    if args.command == "crds":
        return crds_command(write=args.write, check=args.check, chart=args.chart)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
