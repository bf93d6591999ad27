"""`python -m mailshard.proxy`: the routing sidecar of a proxy pod."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mailshard.proxy.sidecar import doveadm_runner, watch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mailshard.proxy", description=__doc__)
    parser.add_argument("--cluster", required=True, help="the MailCluster whose <cluster>-routing table to follow")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--routes-file", required=True, type=Path, help="the route file the proxy's passdb reads")
    parser.add_argument("--proxy-config", type=Path, help="the proxy's dovecot.conf, for doveadm proxy list/kick")
    parser.add_argument("--kubeconfig", help="outside a pod: the kubeconfig to use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watch(
        cluster=args.cluster,
        namespace=args.namespace,
        routes_file=args.routes_file,
        doveadm=doveadm_runner(args.proxy_config),
        kubeconfig=args.kubeconfig,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
