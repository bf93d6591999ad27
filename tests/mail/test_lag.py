"""The lag an agent reports is the lag a client observes.

With the replica's agent stopped (which stops its Dovecot too), mail keeps
arriving at the master: the master's agent must report a lag that starts at
the first undelivered change and grows with the clock, and must fall back to 0
once the replica is back and a client sees the same mail on both sides.
"""

from __future__ import annotations

import asyncio
import time

import mailtools
import pytest
from mail_support import PairFactory, converged, pid_alive, port_open

pytestmark = pytest.mark.mail


async def test_lag_tracks_a_stopped_replica(make_pair: PairFactory) -> None:
    pair = make_pair(users=5)
    a, b = pair.a, pair.b
    await pair.start()
    first = [(user, mailtools.make_message(user, i)) for i in range(4) for user in pair.users]
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], first)
    await converged(a, b)
    await a.wait_status(lambda s: s["replication"]["lagSeconds"] == 0, what="lag 0 after convergence")

    # SIGTERM: the agent stops Dovecot and exits 0; nothing is left listening.
    b_daemon = b.daemon_pid()
    assert b.stop() == 0
    assert b_daemon is not None
    assert not pid_alive(b_daemon)
    assert not port_open(b.ports["imap"])
    assert not port_open(b.ports["doveadm"])

    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(pair.users[0], mailtools.make_message("x", 1))])
    arrived = time.monotonic()
    status = await a.wait_status(lambda s: (s["replication"]["lagSeconds"] or 0) >= 2, within=20, what="lag >= 2s")
    observed = time.monotonic() - arrived
    lag = status["replication"]["lagSeconds"]
    # A lower bound, short by at most one observation interval (0.5 s here) plus the HTTP round trip.
    assert observed - 1.5 <= lag <= observed + 0.1, (lag, observed)
    assert status["replication"]["state"] == "failing"
    assert status["replication"]["behindMailboxes"] == 1
    assert any("unreachable" in error for error in status["errors"])
    assert status["readyAsMaster"] is True  # an unreachable replica does not stop the master
    await asyncio.sleep(1.0)
    later = (await a.status())["replication"]["lagSeconds"]
    assert later >= lag + 0.5, (lag, later)

    # Bring the replica back: it catches up and the lag returns to 0 on both sides.
    b.start()
    await b.wait_healthy()
    await converged(a, b, within=60)
    for member in (a, b):
        await member.wait_status(
            lambda s: s["replication"]["lagSeconds"] == 0 and s["replication"]["state"] == "in-sync",
            what="lag 0 after the replica returned",
        )
    assert await asyncio.to_thread(a.mailbox_counts) == await asyncio.to_thread(b.mailbox_counts)
