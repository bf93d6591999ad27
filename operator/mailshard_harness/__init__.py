"""A real Kubernetes control plane for every test run, built offline from pinned Go modules.

Use it from a shell (`python -m mailshard_harness up|down|status|build`, or
`make cluster-up`/`make cluster-down`) or from pytest (the `control_plane`
session fixture in `mailshard_harness.pytest_plugin`). See
docs/development.md for the design.
"""

from mailshard_harness.cluster import ClusterConfig, ControlPlane, reap_stale
from mailshard_harness.errors import HarnessError

__all__ = ["ClusterConfig", "ControlPlane", "HarnessError", "reap_stale"]
