"""Which Unix user the mail daemon runs as, and how child processes switch to it.

Why this module exists: Dovecot and Cyrus run in single-user mode as one user
(see ``mailshard.backends``). In a pod the agent already is that user (uid
10001, ``vmail`` in both images); on a developer machine or CI the agent may
be root, and then it starts the daemon and its tools as a dedicated system
user (``vmail`` by default, created by ``.ci/install-mail-deps``) and hands it
the data directories.

Both daemons need that user to have a *name*: their configurations name it
(Dovecot's ``mail_uid``, Cyrus's ``cyrus_user``) and Cyrus's ``master`` looks
it up in the user database at start. A pod run under an arbitrary uid that
has no passwd entry (OpenShift's restricted SCC does that) therefore cannot
work, and the agent says so at once instead of failing later inside a daemon.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mailshard.api.constants import MAIL_USER_ID
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


def unprivileged(euid: int, egid: int, user: str | None, group: str | None) -> RunAs:
    """The agent's own, non-root identity from the names its ids have (None: no entry); pure.

    A uid or gid without a name is an ``IdentityError`` that says what to do about it.
    """
    if user is None:
        raise IdentityError(
            f"the agent runs as uid {euid}, which has no passwd entry; the mail daemons run as a named "
            f"user (their configs name it, Cyrus's master looks it up), so run the pod as uid {MAIL_USER_ID} "
            "(the images' vmail) or give this uid an entry (e.g. with nss_wrapper)"
        )
    if group is None:
        raise IdentityError(
            f"the agent runs as gid {egid}, which has no group entry; the mail daemons run as a named "
            f"group, so run the pod with runAsGroup {MAIL_USER_ID} (the images' vmail group)"
        )
    return RunAs(user, group, euid, egid, switch=False)


def resolve_run_as(run_as: str | None) -> RunAs:
    """The current user when not root; otherwise ``run_as`` (which must then exist and not be root)."""
    euid, egid = os.geteuid(), os.getegid()
    if euid != 0:
        try:
            user: str | None = pwd.getpwuid(euid).pw_name
        except KeyError:
            user = None
        try:
            group: str | None = grp.getgrgid(egid).gr_name
        except KeyError:
            group = None
        return unprivileged(euid, egid, user, group)
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
