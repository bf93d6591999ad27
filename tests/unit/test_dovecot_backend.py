"""The Dovecot renderer's replication listener: which service owns it, in which modes.

The daemon itself runs the rendered files in the mail tier; this pins the one structural property the mail tier
cannot force on demand (Dovecot throttles a failing service only when its processes die fast enough, which
depends on the machine's load): the port the peer pulls and pushes through is not in the service that runs the
replicator's outgoing dsync.
"""

from __future__ import annotations

import pytest
from unit_support import MEMBER_PATHS, member_config

from mailshard.backends import ProcessIdentity, ServingMode
from mailshard.backends.dovecot import CONF_FILE, INBOUND_DOVEADM_SERVICE, render_dovecot

pytestmark = pytest.mark.unit

PATHS = MEMBER_PATHS
CONFIG = member_config("dovecot")


def _services(mode: ServingMode) -> dict[str, str]:
    """Service name → the body of its block, as rendered."""
    conf = render_dovecot(CONFIG, mode, paths=PATHS, identity=ProcessIdentity("vmail", "vmail"))[CONF_FILE]
    found = {}
    for block in conf.split("\nservice ")[1:]:
        name, _, rest = block.partition(" {\n")
        found[name] = rest.split("\n}\n", 1)[0] if not rest.startswith("}") else ""
    return found


@pytest.mark.parametrize("mode", [ServingMode.MASTER, ServingMode.REPLICA])
def test_the_replication_port_has_a_service_of_its_own(mode: ServingMode) -> None:
    services = _services(mode)
    inbound = services[INBOUND_DOVEADM_SERVICE]
    assert "executable = doveadm-server" in inbound
    # One client per process, as Dovecot's own doveadm service: a new service's default is 1,000.
    assert "client_limit = 1\n" in inbound
    assert "service_count = 1\n" in inbound
    assert "port = 1345" in inbound
    assert "inet_listener" not in services["doveadm"], "the replicator's own service must not own the port"


def test_a_fenced_member_listens_for_no_replication() -> None:
    services = _services(ServingMode.FENCED)
    assert INBOUND_DOVEADM_SERVICE not in services
    assert "inet_listener" not in services["doveadm"]


def test_only_the_master_pushes() -> None:
    assert "replicator" in _services(ServingMode.MASTER)
    assert "replicator" not in _services(ServingMode.REPLICA)
