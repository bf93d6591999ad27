"""The in-pod agent: runs one member's mail daemon and answers for it.

Why this package exists: the operator decides, the agent does. It renders the
daemon's configuration for the member's role, supervises the daemon, measures
replication, and exposes an authenticated HTTP API for promotion, demotion and
fencing. It never talks to Kubernetes.

Layers, one-way: ``cli`` → ``http`` → ``service`` → I/O helpers (``supervisor``,
``doveadm``, ``peer``, ``state``, ``identity``, ``metrics``) → pure code
(``decide``, ``lag``, ``observe``, and ``mailshard.backends``).
"""
