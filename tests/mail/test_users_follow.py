"""A user added to a shard's users Secret can log in on its master without a restart, on both backends.

The operator updates `<shard>-users` in place and the kubelet swaps the
mounted file atomically; here the file is replaced the same way (write, then
rename over it). Dovecot re-reads a passwd-file that changed; for Cyrus the
agent notices the change and rebuilds the sasldb and the new user's INBOX.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import time
from pathlib import Path

import mailtools
import pytest
from mail_support import PairFactory, cyrus_root

pytestmark = pytest.mark.mail

NEWCOMER, PASSWORD = "newcomer@example.test", "fresh-secret"


def add_newcomer(path: Path) -> None:
    """Replace the file with one more line, as the kubelet swaps an updated Secret in: write, then rename."""
    text = path.read_text() + f"{NEWCOMER}:{{PLAIN}}{PASSWORD}::::::\n"
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(text)
    temporary.chmod(0o644)
    os.replace(temporary, path)


async def login_within(port: int, seconds: float, user: str = NEWCOMER, password: str = PASSWORD) -> float:
    """Retry logging in and selecting INBOX until it works; the seconds it took (fails after `seconds`)."""
    started = time.monotonic()
    while True:
        try:
            client = await asyncio.to_thread(mailtools.imap_login, port, user, password)
        except (imaplib.IMAP4.error, OSError):
            if time.monotonic() - started > seconds:
                raise
            await asyncio.sleep(0.2)
            continue
        typ, _ = await asyncio.to_thread(client.select, "INBOX")
        await asyncio.to_thread(client.logout)
        assert typ == "OK"
        return time.monotonic() - started


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_a_new_user_logs_in_without_a_restart(
    make_pair: PairFactory, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "cyrus":
        root = cyrus_root()
        if not (root / ".complete").exists():
            pytest.skip(f"no Cyrus prefix at {root} (run .ci/install-cyrus-prefix)")
        monkeypatch.setenv("MAILSHARD_CYRUS_ROOT", str(root))
    pair = make_pair(users=2)
    for member in (pair.a, pair.b):
        member.config["backend"] = backend
        member.write_config()
    await pair.start()
    users_file = Path(pair.a.config["usersFile"])
    user = pair.users[0]
    await login_within(pair.a.ports["imap"], 30, user, pair.passwords[user])  # serving (Cyrus opens IMAP late)
    with pytest.raises(imaplib.IMAP4.error):
        await asyncio.to_thread(mailtools.imap_login, pair.a.ports["imap"], NEWCOMER, PASSWORD)
    pids = (pair.a.daemon_pid(), pair.b.daemon_pid())
    await asyncio.to_thread(add_newcomer, users_file)
    took = await login_within(pair.a.ports["imap"], 20)
    print(f"{backend}: users file replaced → the new user's login on the master: {took:.2f} s")
    assert (pair.a.daemon_pid(), pair.b.daemon_pid()) == pids, "no daemon was restarted"
