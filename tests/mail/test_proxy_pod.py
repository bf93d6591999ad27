"""The proxy container exactly as the operator's Deployment runs it: its arguments, its unprivileged user, TLS.

`mailshard.builders.proxy` writes the container's command line; this runs that
command line (with loopback ports and a temporary directory instead of the
pod's emptyDir) as an unprivileged user, as the pod's securityContext does,
with a self-signed certificate in place of the cluster's TLS Secret, in front
of a real Dovecot member. Over implicit TLS and STARTTLS the login reaches the
backend, plaintext logins are refused, and LMTP delivers through it.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import mailtools
import pytest
from mail_support import Member, PairFactory, port_open

from mailshard.api import MailCluster, proxy_pod
from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table
from mailshard.builders.proxy import PROXY_CONTAINER, build_proxy_manifests
from mailshard.proxy.render import Endpoint
from mailshard.proxy.sidecar import apply_table
from mailshard_harness.local_proxy import LocalProxy, missing

pytestmark = pytest.mark.mail

POD_USER = "vmail"


def deployment_serve_args(tls_dir: Path) -> list[str]:
    cluster = MailCluster.from_resource(
        {
            "apiVersion": "mailshard.io/v1alpha1",
            "kind": "MailCluster",
            "metadata": {"name": "demo", "namespace": "mail", "uid": "u-1", "generation": 1},
            "spec": {"tls": {"secretName": "mail-tls"}},
        }
    )
    deployment = build_proxy_manifests(cluster, default_image="unused").deployment
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == PROXY_CONTAINER]
    args: list[str] = list(container["args"])
    assert args[:3] == ["-m", "mailshard.proxy", "serve"]
    args = args[3:]
    args[args.index("--tls-dir") + 1] = str(tls_dir)  # the Secret's mount point, here a directory of our own
    return args


def self_signed(directory: Path) -> ssl.SSLContext:
    directory.mkdir(mode=0o755)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(directory / proxy_pod.TLS_KEY_FILE), "-out", str(directory / proxy_pod.TLS_CERT_FILE),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    for name in (proxy_pod.TLS_KEY_FILE, proxy_pod.TLS_CERT_FILE):
        os.chmod(directory / name, 0o644)  # the Secret volume's fsGroup gives the pod's user the same access
    context = ssl.create_default_context(cafile=str(directory / proxy_pod.TLS_CERT_FILE))
    context.check_hostname = False
    return context


def assert_main_process_is_unprivileged_dovecot(proxy: LocalProxy) -> None:
    """setpriv execs python, which execs dovecot: the container's main process is Dovecot, as the pod's user."""
    assert proxy.proc is not None
    assert Path(f"/proc/{proxy.proc.pid}/comm").read_text().strip() == "dovecot"
    status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam(POD_USER).pw_uid


def route_everyone_to(proxy: LocalProxy, backend: Member) -> None:
    def resolve(host: str) -> Endpoint:
        ports = backend.ports
        return Endpoint("127.0.0.1", ports["imap"], ports["pop3"], ports["lmtp"], ports["managesieve"])

    table = RoutingTable(
        version=1,
        slots=("s1",) * 16,
        shards={"s1": ShardRoute(state=ShardState.SERVING, master="m-a", master_host="a")},
    )
    applied = apply_table(
        render_table(table), previous=None, routes_file=proxy.routes_file, doveadm=proxy.doveadm, resolve=resolve
    )
    assert applied.accepted, applied.problems


class FromAnotherAddress(imaplib.IMAP4):
    """A client at 127.0.0.2: Dovecot counts a connection whose two ends share an address as secured."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.2", 0))


def assert_imap_needs_tls(proxy: LocalProxy, tls: ssl.SSLContext, user: str, password: str) -> None:
    implicit = imaplib.IMAP4_SSL("127.0.0.1", proxy.ports["imaps"], ssl_context=tls, timeout=30)
    try:
        assert implicit.login(user, password)[0] == "OK"
        assert implicit.select("INBOX")[0] == "OK"
    finally:
        implicit.logout()
    plain = FromAnotherAddress("127.0.0.1", proxy.ports["imap"], timeout=30)
    try:
        assert "LOGINDISABLED" in plain.capabilities
        assert "STARTTLS" in plain.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|[Pp]laintext"):
            plain.login(user, password)
        plain.starttls(ssl_context=tls)
        assert plain.login(user, password)[0] == "OK"
    finally:
        plain.logout()


def pop3s_count(proxy: LocalProxy, tls: ssl.SSLContext, user: str, password: str) -> int:
    pop = poplib.POP3_SSL("127.0.0.1", proxy.ports["pop3s"], context=tls, timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        return int(pop.stat()[0])
    finally:
        pop.quit()


async def test_the_deployments_proxy_runs_unprivileged_and_serves_tls(make_pair: PairFactory) -> None:
    problem = missing()
    if problem is not None:
        pytest.skip(problem)
    pair = make_pair(users=2)
    await pair.start()
    backend = pair.a
    deadline = time.monotonic() + 30
    while not port_open(backend.ports["imap"]):
        assert time.monotonic() < deadline, f"the backend never listened:\n{backend.log_tail()}"
        await asyncio.sleep(0.1)
    # Not tmp_path: pytest's base directory is private to root, and the pod's user must reach into this one.
    base = Path(tempfile.mkdtemp(prefix="ms-proxy-pod-"))
    os.chmod(base, 0o755)
    try:
        await asyncio.to_thread(run_checks, backend, pair.passwords, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_checks(backend: Member, passwords: dict[str, str], base: Path) -> None:
    tls = self_signed(base / "tls")
    proxy = LocalProxy.start(base / "pod", serve_args=deployment_serve_args(base / "tls"), user=POD_USER)
    try:
        assert_main_process_is_unprivileged_dovecot(proxy)
        route_everyone_to(proxy, backend)
        user = sorted(passwords)[0]
        assert_imap_needs_tls(proxy, tls, user, passwords[user])
        before = pop3s_count(proxy, tls, user, passwords[user])
        # LMTP comes from MTAs inside the cluster: no TLS required, routed like a login.
        assert mailtools.deliver(proxy.ports["lmtp"], [(user, mailtools.make_message(user, 1))]) == 1
        count, _ = mailtools.counts(backend.ports["imap"], [user], passwords)[user]
        assert count == before + 1
    finally:
        proxy.stop()
        exit_code = proxy.proc.returncode if proxy.proc is not None else None
        assert exit_code in (0, None), f"the proxy exited with {exit_code}:\n{proxy.log_tail()}"
