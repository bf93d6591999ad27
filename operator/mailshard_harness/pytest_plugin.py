"""pytest fixtures for the control plane: one instance per test session, torn down for sure.

Load with `pytest_plugins = ["mailshard_harness.pytest_plugin"]`. Set
MAILSHARD_KUBECONFIG to run the tests against an existing cluster instead;
tests that need the harness itself (its audit log, its KWOK nodes) then skip.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from mailshard_harness.cluster import ClusterConfig, ControlPlane, runs_root
from mailshard_harness.errors import HarnessError


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane | None]:
    """The harness instance this session started, or None when MAILSHARD_KUBECONFIG points elsewhere."""
    if os.environ.get("MAILSHARD_KUBECONFIG"):
        yield None
        return
    config = ClusterConfig(
        name=f"pytest-{os.getpid()}",
        nodes=int(os.environ.get("MAILSHARD_TEST_NODES", "3")),
        owner_pid=os.getpid(),
        directory=runs_root() / f"pytest-{os.getpid()}",
    )
    try:
        plane = ControlPlane.start(config)
    except HarnessError as error:
        pytest.exit(f"control plane did not start: {error}", returncode=3)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def harness(control_plane: ControlPlane | None) -> ControlPlane:
    """The harness instance itself, for tests that read its audit log or drive its nodes."""
    if control_plane is None:
        pytest.skip("needs the local harness (MAILSHARD_KUBECONFIG points at another cluster)")
    return control_plane


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane | None) -> Path:
    """Path of an admin kubeconfig for a real control plane."""
    if control_plane is None:
        return Path(os.environ["MAILSHARD_KUBECONFIG"])
    return control_plane.kubeconfig


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, named after it, deleted afterwards. Needs an `api_client` fixture."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"mailshard.io/test": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")
