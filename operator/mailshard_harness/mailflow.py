"""Mail flowing while things break: a delivery stream that records what was acknowledged, and a loss check.

Why this module exists: "no acknowledged delivery is lost" is checked the same
way wherever a master is killed (the mail tier's drill, the integration
tier's drill with the real operator, and the failover benchmark): stream LMTP
deliveries, remember which ones got a 250, then count each one's copies in
the surviving store. One implementation keeps those three honest alike.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

Sent = tuple[str, str]
"""(user, Message-ID)."""


class Stream:
    """Delivers to each user in turn over one LMTP session until stopped or the session breaks."""

    def __init__(self, host: str, port: int, users: list[str], tag: str) -> None:
        self.host, self.port, self.users, self.tag = host, port, users, tag
        self.acked: list[Sent] = []
        """Every message that got a 250."""
        self.unacked: list[Sent] = []
        """Sent, but the session broke or a temporary error came back: a real sender would retry these."""
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lmtp-{tag}", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, count: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(f"only {len(self.acked)} deliveries acknowledged ({self.error})")
            if not self._thread.is_alive():
                raise AssertionError(f"the delivery stream ended early: {self.error}")
            time.sleep(0.01)

    def _run(self) -> None:
        n = 0
        try:
            with smtplib.LMTP(self.host, self.port, timeout=30) as lmtp:
                while not self._stop.is_set():
                    user = self.users[n % len(self.users)]
                    message_id = f"<{self.tag}.{n}@mailshard.test>"
                    message = (
                        f"From: sender@example.test\r\nTo: {user}\r\nSubject: stream {n}\r\n"
                        f"Message-ID: {message_id}\r\n\r\nBody {n}.\r\n"
                    ).encode()
                    n += 1
                    try:
                        refused = lmtp.sendmail("sender@example.test", [user], message)
                    except (smtplib.SMTPException, OSError) as exc:
                        self.unacked.append((user, message_id))
                        self.error = f"{type(exc).__name__}: {exc}"
                        return
                    if refused:
                        self.unacked.append((user, message_id))
                        self.error = f"refused: {refused}"
                        return
                    self.acked.append((user, message_id))
        except (smtplib.SMTPException, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def doveadm_json(conf: Path, *args: str) -> list[dict[str, str]]:
    """doveadm against one member's own store (as ``vmail`` when root, as the images run it), JSON parsed."""
    argv = ["doveadm", "-c", str(conf), "-f", "json", *args]
    run_as = {"user": "vmail", "group": "vmail", "extra_groups": []} if os.geteuid() == 0 else {}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, **run_as)  # type: ignore[call-overload]
    rows: list[dict[str, str]] = json.loads(done.stdout or "[]")
    return rows


def held(conf: Path, users: Iterable[str]) -> Counter[Sent]:
    """How many copies of each (user, Message-ID) the store holds, in every mailbox."""
    copies: Counter[Sent] = Counter()
    for user in users:
        for row in doveadm_json(conf, "fetch", "-u", user, "hdr.message-id", "ALL"):
            copies[user, row["hdr.message-id"]] += 1
    return copies


def losses(on_master: Counter[Sent], acked: Iterable[Sent], unacked: Iterable[Sent]) -> list[str]:
    """What is wrong, in words: acknowledged messages missing, duplicates, or messages nobody sent."""
    acked, unacked = list(acked), list(unacked)
    problems = []
    lost = [key for key in acked if on_master[key] == 0]
    if lost:
        problems.append(f"{len(lost)} acknowledged deliveries lost, e.g. {lost[:3]}")
    duplicated = [key for key, copies in on_master.items() if copies > 1]
    if duplicated:
        problems.append(f"{len(duplicated)} messages held more than once, e.g. {duplicated[:3]}")
    unexpected = set(on_master) - set(acked) - set(unacked)
    if unexpected:
        problems.append(f"{len(unexpected)} messages nobody sent, e.g. {sorted(unexpected)[:3]}")
    return problems
