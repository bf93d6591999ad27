"""The agent started as the operator's pods start it: no arguments but the pod's environment and shard.json.

This is the contract between `builders.statefulset` (env MAILSHARD_CONFIG,
MAILSHARD_MEMBER, MAILSHARD_INITIAL_ROLE; shard.json from the ConfigMap;
secrets as files) and the agent, exercised with a real Dovecot. A shard.json
that is gone or that the agent may not read leaves it serving its API with
the reason, and nothing else: never a master, not even from the member config
an earlier start left on the volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mailtools
import pytest
from mail_support import REPO, free_ports, port_open

from mailshard.api.runtime import RuntimeMember, RuntimePorts, RuntimeReplication, ShardRuntimeConfig

pytestmark = pytest.mark.mail


def start(
    base: Path, shard_json: Path, role: str, *, extra: Sequence[str] = (), as_user: str | None = None
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "operator"),
        MAILSHARD_CONFIG=str(shard_json),
        MAILSHARD_MEMBER="pod-1-a",
        MAILSHARD_INITIAL_ROLE=role,
    )
    argv = [
        *(["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"] if as_user else []),
        sys.executable,
        "-m",
        "mailshard.agent",
        "--data-dir",
        str(base / "data"),
        "--users-file",
        str(base / "users"),
        *extra,
    ]
    with (base / "agent.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def healthy(port: int, *, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the agent on port {port} did not become healthy within {within:.0f} s")


@dataclass(frozen=True)
class PodShard:
    """Member pod-1-a's files under one directory, as the pod would have them mounted, and its ports."""

    base: Path
    ports: dict[str, int]

    @property
    def shard_json(self) -> Path:
        return self.base / "shard.json"

    @property
    def without_shard_json(self) -> list[str]:
        """What the agent cannot learn from a shard.json it cannot read: the API's token file and port."""
        return ["--token-file", str(self.base / "token"), "--listen", f"127.0.0.1:{self.ports['agent']}"]

    def request(self, method: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['agent']}{path}",
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], *, within: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                code, last = self.request("GET", "/status")
                if code == 200 and predicate(last):
                    return dict(last)
            time.sleep(0.2)
        raise AssertionError(f"no such status within {within:.0f} s; last: {last}\n{self.log()}")

    def log(self) -> str:
        return (self.base / "agent.log").read_text(errors="replace")


TOKEN = "pod-token"


@pytest.fixture
def pod_shard() -> Iterator[PodShard]:
    base = Path(tempfile.mkdtemp(prefix="ms-pod-"))
    base.chmod(0o755)
    names = ("imap", "pop3", "lmtp", "managesieve", "replication", "agent")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    (base / "users").write_text("alice@example.test:{PLAIN}wonderland::::::\n")
    (base / "token").write_text(TOKEN + "\n")
    (base / "replication-password").write_text("pod-replication-secret\n")
    shard = ShardRuntimeConfig(
        shard="pod-1",
        namespace="mail",
        backend="dovecot",
        # The peer's address is on loopback but nothing listens there: a replica that is down.
        members=(RuntimeMember(name="pod-1-a", host="127.0.0.1"), RuntimeMember(name="pod-1-b", host="127.0.0.2")),
        ports=RuntimePorts(**ports),
        replication=RuntimeReplication(max_lag_seconds=30, password_file=str(base / "replication-password")),
        mailboxes=10,
        mail_dir=str(base / "data" / "mail"),
        agent_token_file=str(base / "token"),
    )
    (base / "shard.json").write_text(shard.to_json())
    yield PodShard(base, ports)
    subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.usefixtures("dovecot_installed")
def test_agent_runs_a_member_from_the_pod_contract_alone(pod_shard: PodShard) -> None:
    base, ports = pod_shard.base, pod_shard.ports
    process = start(base, pod_shard.shard_json, "master")
    try:
        healthy(ports["agent"])
        assert (base / "data" / "role").read_text().strip() == "master"
        member = json.loads((base / "data" / "runtime.json").read_text())
        assert member["member"] == "pod-1-a"
        assert member["peer"]["name"] == "pod-1-b"
        assert member["ports"]["doveadm"] == ports["replication"]
        delivered = mailtools.deliver(ports["lmtp"], [("alice@example.test", mailtools.make_message("alice", 1))])
        assert delivered == 1
        messages, uidnext = mailtools.counts(
            ports["imap"], ["alice@example.test"], {"alice@example.test": "wonderland"}
        )["alice@example.test"]
        assert (messages, uidnext) == (1, 2)
        stop(process)
        # A restarted pod whose label still says replica: the role file on the volume wins.
        process = start(base, pod_shard.shard_json, "replica")
        healthy(ports["agent"])
        assert (base / "data" / "role").read_text().strip() == "master"
        assert port_open(ports["imap"])
    finally:
        stop(process)


def assert_serves_nothing(pod_shard: PodShard, process: subprocess.Popen[bytes], problem: str) -> None:
    """Only the API answers, with the problem as the config error, in the log in the same words."""
    status = pod_shard.wait_status(lambda s: s["configError"] is not None)
    assert status["configError"] == problem
    assert problem in status["errors"]
    assert (status["mode"], status["readyAsMaster"], status["daemonUp"]) == ("fenced", False, False)
    assert pod_shard.request("GET", "/healthz")[0] == 503
    code, refused = pod_shard.request("POST", "/promote")
    assert code == 409
    assert refused["error"] == f"cannot promote: {problem}"
    for port in ("imap", "lmtp", "pop3", "managesieve", "replication"):
        assert not port_open(pod_shard.ports[port]), port
    assert not (pod_shard.base / "data" / "runtime.json").exists()
    assert f"{problem}; not starting the daemon, never serving as master" in pod_shard.log()
    assert process.poll() is None  # no crash loop: the pod stays, saying why


@pytest.mark.usefixtures("dovecot_installed")
def test_a_missing_shard_json_is_reported_and_nothing_serves(pod_shard: PodShard) -> None:
    process = start(pod_shard.base, pod_shard.shard_json, "master")
    try:
        healthy(pod_shard.ports["agent"])  # a master that leaves its role file and runtime.json on the volume
        stop(process)
        pod_shard.shard_json.unlink()
        process = start(pod_shard.base, pod_shard.shard_json, "master", extra=pod_shard.without_shard_json)
        path = pod_shard.shard_json
        assert_serves_nothing(
            pod_shard, process, f"shard config {path} is unreadable: [Errno 2] No such file or directory: '{path}'"
        )
    finally:
        stop(process)


@pytest.mark.usefixtures("dovecot_installed")
def test_a_shard_json_the_agent_may_not_read_is_reported_and_nothing_serves(pod_shard: PodShard) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting the agent as another user (vmail, as uid 10001 in the image) needs root")
    pod_shard.shard_json.chmod(0o600)  # root's own: the agent, running as vmail, may not read it
    data = pod_shard.base / "data"
    data.mkdir()
    shutil.chown(data, "vmail", "vmail")
    process = start(pod_shard.base, pod_shard.shard_json, "master", extra=pod_shard.without_shard_json, as_user="vmail")
    try:
        path = pod_shard.shard_json
        assert_serves_nothing(
            pod_shard, process, f"shard config {path} is unreadable: [Errno 13] Permission denied: '{path}'"
        )
        assert (data / "role").read_text().strip() == "master"  # the role is kept for when the config is back
    finally:
        stop(process)
