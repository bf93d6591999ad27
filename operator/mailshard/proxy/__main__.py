"""`python -m mailshard.proxy`: the two containers of a proxy pod.

`serve` renders the Dovecot proxy's configuration (`mailshard.proxy.render`)
into the pod's shared directory and replaces itself with `dovecot -F`, so the
container's main process is Dovecot and gets the kubelet's signals directly.
`follow` is the routing sidecar: it watches the cluster's routing table
through the API and rewrites the route file the proxy's passdb reads, and
serves its metrics (`mailshard.proxy.metrics`) on `--metrics-address`. The
operator's Deployment (`mailshard.builders.proxy`) runs exactly these, and the
test harness starts its local proxies through `serve` too.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
from pathlib import Path

from mailshard.api import proxy_pod
from mailshard.metrics import serve_metrics
from mailshard.proxy.metrics import SidecarMetrics
from mailshard.proxy.render import PROTOCOLS, Endpoint, ProxyPorts, ProxySettings, render_proxy
from mailshard.proxy.sidecar import doveadm_runner, watch


def _port_override(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    if name not in ProxyPorts.__dataclass_fields__ or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=PORT with NAME one of {sorted(ProxyPorts.__dataclass_fields__)}"
        )
    return name, int(port)


def _backend_port(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    if name not in PROTOCOLS or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT with NAME one of {', '.join(PROTOCOLS)}")
    return name, int(port)


def _protocols(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PROTOCOLS)}")
    return names


def _login_user() -> str:
    """The user Dovecot's login and auth processes run as: the pod's own (non-root), or `dovecot` under root."""
    uid = os.geteuid()
    return "dovecot" if uid == 0 else pwd.getpwuid(uid).pw_name


def settings_from(args: argparse.Namespace) -> ProxySettings:
    state: Path = args.dir
    tls: Path | None = args.tls_dir
    return ProxySettings(
        base_dir=proxy_pod.run_dir(state),
        conf_dir=proxy_pod.conf_dir(state),
        routes_file=proxy_pod.routes_file(state),
        user=_login_user(),
        group=_login_user(),
        listen=args.listen,
        ports=ProxyPorts(**dict(args.port)),
        tls_cert=tls / proxy_pod.TLS_CERT_FILE if tls is not None else None,
        tls_key=tls / proxy_pod.TLS_KEY_FILE if tls is not None else None,
        protocols=args.protocols,
        state_dir=proxy_pod.dovecot_state_dir(state),
    )


def serve(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    for directory in (settings.conf_dir, settings.base_dir, settings.routes_file.parent, settings.state_dir):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    for name, text in render_proxy(settings).items():
        (settings.conf_dir / name).write_text(text)
    conf = str(settings.conf_dir / "dovecot.conf")
    logging.getLogger("mailshard.proxy").info("serving %s with %s", ", ".join(settings.protocols), conf)
    os.execvp("dovecot", ["dovecot", "-F", "-c", conf])


def follow(args: argparse.Namespace) -> None:
    state: Path = args.dir
    routes = proxy_pod.routes_file(state)
    routes.parent.mkdir(parents=True, exist_ok=True)
    metrics = SidecarMetrics(args.namespace, args.cluster)
    if args.metrics_address:
        serve_metrics(args.metrics_address, metrics.registry)
        logging.getLogger("mailshard.proxy").info("serving metrics on http://%s/metrics", args.metrics_address)
    ports = dict(args.backend_port)
    watch(
        metrics=metrics,
        cluster=args.cluster,
        namespace=args.namespace,
        routes_file=routes,
        doveadm=doveadm_runner(proxy_pod.conf_dir(state) / "dovecot.conf"),
        kubeconfig=args.kubeconfig,
        resolve=lambda host: Endpoint(host, **ports),
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mailshard.proxy", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="render the proxy's configuration and exec dovecot -F")
    serve_cmd.add_argument("--dir", type=Path, default=proxy_pod.STATE_DIR, help="the pod's shared directory")
    serve_cmd.add_argument("--protocols", type=_protocols, default=PROTOCOLS, help="comma-separated; default all")
    serve_cmd.add_argument("--tls-dir", type=Path, help="a directory with tls.crt and tls.key; unset: no TLS")
    serve_cmd.add_argument("--listen", default="*", help="addresses to listen on (Dovecot's `listen`)")
    serve_cmd.add_argument(
        "--port", type=_port_override, action="append", default=[], help="NAME=PORT, e.g. imap=1143 (tests)"
    )
    serve_cmd.set_defaults(run=serve)
    follow_cmd = commands.add_parser("follow", help="watch <cluster>-routing and keep the route file current")
    follow_cmd.add_argument("--cluster", required=True, help="the MailCluster whose <cluster>-routing to follow")
    follow_cmd.add_argument("--namespace", required=True)
    follow_cmd.add_argument("--dir", type=Path, default=proxy_pod.STATE_DIR, help="the pod's shared directory")
    follow_cmd.add_argument("--kubeconfig", help="outside a pod: the kubeconfig to use")
    follow_cmd.add_argument(
        "--metrics-address", default="", help="[HOST]:PORT to serve Prometheus metrics on; empty: none"
    )
    follow_cmd.add_argument(
        "--backend-port",
        type=_backend_port,
        action="append",
        default=[],
        help="NAME=PORT where the masters serve a protocol, e.g. imap=10143 (tests); default: the standard ports",
    )
    follow_cmd.set_defaults(run=follow)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":  # pragma: no cover
    main()
