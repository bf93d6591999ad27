"""Cyrus's own log lines, which it writes only to syslog, appear in its agent's output.

The agent binds a unix datagram socket in the member's run directory and runs
Cyrus with the preloaded library that sends every syslog(3) line there
(``mailshard.agent.daemonlog``); no syslog daemon and no ``/dev/log`` are
involved, which is what lets it work in a pod as uid 10001. Logins, good and
bad, are what an operator looks for first, so they are what is checked here.
"""

from __future__ import annotations

import asyncio
import imaplib
import time

import mailtools
import pytest
from mail_support import Member, PairFactory

pytestmark = pytest.mark.mail


async def wait_for_line(member: Member, *needles: str, within: float = 10.0) -> str:
    """The first line of the agent's output that holds every needle."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in member.log_path.read_text(errors="replace").splitlines():
            if all(needle in line for needle in needles):
                return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"no line with {needles} in {member.name}'s output:\n{member.log_tail(40)}")


async def test_cyrus_logins_reach_the_agents_output(make_cyrus_pair: PairFactory) -> None:
    pair = make_cyrus_pair(users=2)
    await pair.start()
    a = pair.a
    await a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    user, other = pair.users

    client = await asyncio.to_thread(mailtools.imap_login, a.ports["imap"], user, pair.passwords[user])
    client.logout()
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(mailtools.imap_login, a.ports["imap"], other, "wrong-password")

    login = await wait_for_line(a, "mailshard.agent.cyrus", "/imap[", "login:", user)
    assert " INFO " in login, login
    refused = await wait_for_line(a, "mailshard.agent.cyrus", "/imap[", "badlogin:", other)
    assert " INFO " in refused or " WARNING " in refused, refused
    # The replica's Cyrus logs through its own agent the same way: here, the master's sync client logging in.
    await wait_for_line(pair.b, "mailshard.agent.cyrus", "/syncserver[", "login:", "mailshard-sync")
