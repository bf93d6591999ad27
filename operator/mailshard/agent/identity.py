"""Which Unix user the mail daemon runs as, and how child processes switch to it.

Why this module exists: Dovecot runs in non-root mode as one user (see
``mailshard.backends.dovecot``). In a pod the agent already is that user; on a
developer machine or CI the agent may be root, and then it starts Dovecot and
doveadm as a dedicated system user (``vmail`` by default, created by
``.ci/install-mail-deps``) and hands it the data directories.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mailshard.backends import ProcessIdentity


class IdentityError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunAs:
    user: str
    group: str
    uid: int
    gid: int
    switch: bool
    """True when the agent is root and must switch to this user for every child process."""

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(user=self.user, group=self.group)

    def spawn_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``asyncio.create_subprocess_exec`` that run the child as this user."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        """Give ``path`` to this user (a no-op unless the agent is root)."""
        if self.switch:
            os.chown(path, self.uid, self.gid)


def resolve_run_as(run_as: str | None) -> RunAs:
    """The current user when not root; otherwise ``run_as`` (which must then exist and not be root)."""
    euid = os.geteuid()
    if euid != 0:
        entry = pwd.getpwuid(euid)
        return RunAs(entry.pw_name, grp.getgrgid(os.getegid()).gr_name, euid, os.getegid(), switch=False)
    name = run_as or "vmail"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise IdentityError(
            f"the agent runs as root, so Dovecot must run as an unprivileged user, but user {name!r} "
            "does not exist (create it, e.g. with .ci/install-mail-deps, or pass --run-as)"
        ) from None
    if entry.pw_uid == 0:
        raise IdentityError(f"--run-as {name!r} is root; Dovecot must not access mail as root")
    return RunAs(name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid, switch=True)
