"""The agent started as the operator's pods start it: no arguments but the pod's environment and shard.json.

This is the contract between `builders.statefulset` (env MAILSHARD_CONFIG,
MAILSHARD_MEMBER, MAILSHARD_INITIAL_ROLE; shard.json from the ConfigMap;
secrets as files) and the agent, exercised with a real Dovecot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mailtools
import pytest
from mail_support import REPO, free_ports, port_open

from mailshard.api.runtime import RuntimeMember, RuntimePorts, RuntimeReplication, ShardRuntimeConfig

pytestmark = pytest.mark.mail


def start(base: Path, shard_json: Path, role: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "operator"),
        MAILSHARD_CONFIG=str(shard_json),
        MAILSHARD_MEMBER="pod-1-a",
        MAILSHARD_INITIAL_ROLE=role,
    )
    argv = [
        sys.executable,
        "-m",
        "mailshard.agent",
        "--data-dir",
        str(base / "data"),
        "--users-file",
        str(base / "users"),
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


@pytest.mark.usefixtures("dovecot_installed")
def test_agent_runs_a_member_from_the_pod_contract_alone() -> None:
    base = Path(tempfile.mkdtemp(prefix="ms-pod-"))
    base.chmod(0o755)
    imap, pop3, lmtp, sieve, replication, agent = free_ports(6)
    (base / "users").write_text("alice@example.test:{PLAIN}wonderland::::::\n")
    (base / "token").write_text("pod-token\n")
    (base / "replication-password").write_text("pod-replication-secret\n")
    shard = ShardRuntimeConfig(
        shard="pod-1",
        namespace="mail",
        backend="dovecot",
        # The peer's address is on loopback but nothing listens there: a replica that is down.
        members=(RuntimeMember(name="pod-1-a", host="127.0.0.1"), RuntimeMember(name="pod-1-b", host="127.0.0.2")),
        ports=RuntimePorts(imap=imap, pop3=pop3, lmtp=lmtp, managesieve=sieve, replication=replication, agent=agent),
        replication=RuntimeReplication(max_lag_seconds=30, password_file=str(base / "replication-password")),
        mailboxes=10,
        mail_dir=str(base / "data" / "mail"),
        agent_token_file=str(base / "token"),
    )
    shard_json = base / "shard.json"
    shard_json.write_text(shard.to_json())
    process = start(base, shard_json, "master")
    try:
        healthy(agent)
        assert (base / "data" / "role").read_text().strip() == "master"
        member = json.loads((base / "data" / "runtime.json").read_text())
        assert member["member"] == "pod-1-a"
        assert member["peer"]["name"] == "pod-1-b"
        assert member["ports"]["doveadm"] == replication
        delivered = mailtools.deliver(lmtp, [("alice@example.test", mailtools.make_message("alice", 1))])
        assert delivered == 1
        messages, uidnext = mailtools.counts(imap, ["alice@example.test"], {"alice@example.test": "wonderland"})[
            "alice@example.test"
        ]
        assert (messages, uidnext) == (1, 2)
        stop(process)
        # A restarted pod whose label still says replica: the role file on the volume wins.
        process = start(base, shard_json, "replica")
        healthy(agent)
        assert (base / "data" / "role").read_text().strip() == "master"
        assert port_open(imap)
    finally:
        stop(process)
        subprocess.run(["rm", "-rf", str(base)], check=False)
