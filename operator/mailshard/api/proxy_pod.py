"""The contract between the proxy Deployment the operator builds and `python -m mailshard.proxy` in its pods.

Both containers of a proxy pod (the Dovecot proxy, started by `serve`, and the
routing sidecar, `follow`) share one emptyDir: `serve` renders the proxy's
configuration into it and the sidecar writes the route file there and reaches
the proxy's doveadm socket there to kick sessions. The builder and the command
line take the layout from here, so they cannot disagree about a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

STATE_DIR: Final = Path("/run/mailshard-proxy")
"""The shared emptyDir; short, because Dovecot's sockets live under it (107 bytes at most)."""
TLS_DIR: Final = Path("/etc/mailshard/tls")
"""Where the cluster's kubernetes.io/tls Secret is mounted: tls.crt and tls.key."""
TLS_CERT_FILE: Final = "tls.crt"
TLS_KEY_FILE: Final = "tls.key"
METRICS_PORT: Final = 9090
"""Where the routing sidecar serves its Prometheus metrics (`mailshard.proxy.metrics`), port name `metrics`."""


def conf_dir(state_dir: Path) -> Path:
    return state_dir / "conf"


def run_dir(state_dir: Path) -> Path:
    """Dovecot's base_dir: its sockets (the doveadm socket the sidecar kicks sessions through) and pid file."""
    return state_dir / "run"


def dovecot_state_dir(state_dir: Path) -> Path:
    """Dovecot's state_dir, which must be writable by the unprivileged pod (the default is /var/lib/dovecot)."""
    return state_dir / "state"


def routes_file(state_dir: Path) -> Path:
    return state_dir / "routes" / "routes.txt"
