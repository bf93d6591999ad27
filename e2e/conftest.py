"""Fixtures for the e2e tier: a cluster whose nodes really run our images.

With MAILSHARD_KUBECONFIG or KUBECONFIG set, the tests run against that cluster
(`make e2e-kind`: a 3-node kind cluster). Otherwise they use the machine's real
node (`mailshard_harness.node`): the one `make e2e-up` left running, or one this
session starts and stops; a node this session started must leave the host as it
found it, or the session errors at teardown (the teardown proof).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e_support import Cluster
from mailshard_harness.errors import HarnessError
from mailshard_harness.node import NodeConfig, NodeHarness
from mailshard_harness.pytest_plugin import namespace


def _report(pytestconfig: pytest.Config, message: str) -> None:
    # Past pytest's capture: timings are what a developer runs this tier for.
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[e2e] {message}")


def _refuse_kwok_only(kubeconfig: Path) -> None:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        nodes = client.CoreV1Api(api).list_node().items
    finally:
        api.close()
    if nodes and all((n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake" for n in nodes):
        pytest.exit(f"{kubeconfig} is a KWOK cluster (no node runs containers); unset KUBECONFIG to use a real node", 3)


__all__ = ["namespace"]  # the shared per-test namespace fixture


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    external = os.environ.get("MAILSHARD_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if external:
        _refuse_kwok_only(Path(external))
        yield Cluster(kubeconfig=Path(external), node_subnet=None)
        return
    running = NodeHarness.running()
    if running is not None:
        _report(pytestconfig, f"using the running node (make e2e-up): {running.kubeconfig}")
        imported = running.import_images()
        if imported is not None:
            _report(pytestconfig, f"imported the images built since it started ({imported:.1f} s)")
        yield Cluster(kubeconfig=running.kubeconfig, node_subnet=running.network.subnet)
        return
    try:
        node = NodeHarness.start(NodeConfig(owner_pid=os.getpid()))
    except HarnessError as error:
        pytest.exit(f"the real node did not start: {error}", returncode=3)
    _report(pytestconfig, "node started: " + ", ".join(f"{k} {v}" for k, v in node.state.timings.items()))
    problems: list[str] = []
    try:
        yield Cluster(kubeconfig=node.kubeconfig, node_subnet=node.network.subnet)
    finally:
        rss = sum(node.rss_bytes().values()) / 2**20
        _report(pytestconfig, f"RSS of the whole cluster (with its pods) before stopping: {rss:.0f} MiB")
        started = time.monotonic()
        problems = node.stop()
        _report(pytestconfig, f"node stopped in {time.monotonic() - started:.1f} s")
    if problems:
        pytest.fail("stopping the node did not leave the host as it found it:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()
