"""Runs ``doveadm`` against the member's own Dovecot and returns parsed results.

Why this module exists: every fact the agent reports about mailboxes and
replication comes from a real doveadm command, run here with a timeout, as the
daemon's user, against the rendered configuration. Parsing lives in
``observe.py`` so that it is testable without a daemon.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailshard.agent.identity import RunAs
from mailshard.agent.lmtp import JOURNAL_HEADER
from mailshard.agent.observe import (
    MAILBOX_STATUS_FIELDS,
    MailboxState,
    ReplicatorUser,
    parse_journal_ids,
    parse_mailbox_status,
    parse_replicator_status,
)

DSYNC_LOCK_SECONDS = 10.0
"""How long a re-seed of one user waits for dsync's lock of that user."""


class DoveadmError(RuntimeError):
    pass


class Doveadm:
    def __init__(self, binary: str, conf: Path, run_as: RunAs, *, timeout: float = 15.0) -> None:
        self.binary = binary
        self.conf = conf
        self.run_as = run_as
        self.timeout = timeout

    async def run(self, *args: str, json_output: bool = True, within: float | None = None) -> str:
        argv = [self.binary, "-c", str(self.conf)]
        if json_output:
            argv += ["-f", "json"]
        argv += list(args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                **self.run_as.spawn_kwargs(),  # type: ignore[arg-type]
            )
        except FileNotFoundError:
            raise DoveadmError(f"doveadm binary {self.binary!r} not found") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within or self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DoveadmError(f"doveadm {' '.join(args)} timed out after {within or self.timeout:.0f}s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise DoveadmError(
                f"doveadm {' '.join(args)} exited {proc.returncode}: {message[-1] if message else 'no output'}"
            )
        return out.decode(errors="replace")

    async def mailbox_status(self) -> tuple[MailboxState, ...]:
        """Every mailbox of every user (the userdb is iterated)."""
        text = await self.run("mailbox", "status", "-A", " ".join(MAILBOX_STATUS_FIELDS), "*")
        return parse_mailbox_status(text)

    async def replicator_status(self) -> tuple[ReplicatorUser, ...]:
        return parse_replicator_status(await self.run("replicator", "status", "*"))

    async def replicate(self, user_mask: str = "*", *, full: bool = False) -> None:
        """Ask the replicator to sync users now (a nudge after the peer comes back)."""
        args = ["replicator", "replicate", "-p", "high"]
        if full:
            args.append("-f")
        await self.run(*args, user_mask, json_output=False)

    async def raise_uidnext(self, user: str, floors: dict[str, int]) -> None:
        """Make each of the user's mailboxes hand out UIDs from at least its floor on (never lowers one).

        One `mailbox update` per mailbox: `doveadm batch` does not parse the
        command's long options in 2.3.19, so it cannot carry `--min-next-uid`.
        """
        for mailbox, floor in sorted(floors.items()):
            await self.run("mailbox", "update", "-u", user, "--min-next-uid", str(floor), mailbox, json_output=False)

    async def create_mailbox(self, user: str, mailbox: str, uidvalidity: int, uidnext: int) -> None:
        """Create a user's mailbox under a given UIDVALIDITY, its next UID at least ``uidnext``.

        What a failover needs for a mailbox the old master had and the replica never got: created afresh it
        would get a new UIDVALIDITY, and every client that had seen it would download it again.
        ``mailbox create`` cannot set either, so ``mailbox update`` follows at once. Both run without the
        replication plugin (``-o mail_plugins=``): otherwise the replicator may push the new mailbox to the
        peer between the two under its fresh UIDVALIDITY, and dsync then keeps the higher of two
        UIDVALIDITYs, the fresh one (measured on 2.3.19). The caller has the user replicated afterwards.
        """
        unreplicated = ("-o", "mail_plugins=")
        await self.run(*unreplicated, "mailbox", "create", "-u", user, mailbox, json_output=False)
        limits = ("--uid-validity", str(uidvalidity), "--min-next-uid", str(uidnext))
        await self.run(*unreplicated, "mailbox", "update", "-u", user, *limits, mailbox, json_output=False)

    async def journal_ids(self, user: str, saved_within_seconds: int) -> set[str]:
        """The journal ids (``X-Mailshard-Journal``) of the user's messages saved in the last N seconds."""
        field = "hdr." + JOURNAL_HEADER.lower()
        text = await self.run("fetch", "-u", user, field, "SAVEDSINCE", f"{max(1, saved_within_seconds)}secs")
        return parse_journal_ids(text, field)

    async def users(self) -> list[str]:
        """Every user of the userdb (iterated, as the replicator does)."""
        text = await self.run("user", "*", json_output=False)
        return [line.strip() for line in text.splitlines() if line.strip()]

    async def pull_user(self, user: str, peer: str, *, within: float) -> None:
        """Make this store's copy of one user identical to the peer's (``doveadm backup -R``): a re-seed.

        ``-l`` takes dsync's per-user lock, so a replicator sync of the same user waits instead of interleaving.
        """
        args = ("backup", "-R", "-l", str(int(DSYNC_LOCK_SECONDS)), "-u", user, f"tcp:{peer}")
        await self.run(*args, json_output=False, within=within)
