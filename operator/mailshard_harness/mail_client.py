"""A mail client that runs inside the cluster, in a pod of its own, for the e2e tier and the demo.

Why it exists: the e2e tests and `make demo` must speak IMAP and LMTP to the
proxy Service the way a mail client or an MTA would, from outside the mail
pods, and the same code must work on the machine's real node and on kind,
where the host cannot reach Service IPs. So this file is shipped whole in a
ConfigMap to a client pod (our Dovecot image, which has Debian's python3) and
run there with exec. It therefore imports the standard library only, and
prints JSON.

Commands:
- `deliver`: N LMTP deliveries round-robin over the users, one session.
- `stream`: deliveries until a stop file appears, as an MTA would send them:
  a broken session or a temporary refusal defers the message, and deferred
  messages are retried (same Message-ID) on a new session. Every outcome is a
  JSON line with a timestamp.
- `inventory`: per user, UIDVALIDITY and UID → Message-ID of INBOX, over IMAP.
- `watch`: IMAP logins every 50 ms until a stop file appears; a JSON line
  whenever logins switch between served and refused.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import re
import smtplib
import sys
import time
from collections import deque

SENDER = "sender@example.test"


def _message(user: str, message_id: str, n: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {user}\r\nSubject: e2e {n}\r\nMessage-ID: {message_id}\r\n\r\nBody {n}.\r\n"
    ).encode()


def _emit(record: dict[str, object]) -> None:
    print(json.dumps({"t": round(time.time(), 3), **record}), flush=True)


def deliver(host: str, port: int, users: list[str], count: int, tag: str) -> int:
    acked: list[list[str]] = []
    refused: list[list[str]] = []
    with smtplib.LMTP(host, port, timeout=30) as lmtp:
        for n in range(count):
            user = users[n % len(users)]
            message_id = f"<{tag}.{n}@mailshard.test>"
            try:
                lmtp.sendmail(SENDER, [user], _message(user, message_id, n))
            except smtplib.SMTPException as exc:
                refused.append([user, message_id, str(exc)])
                continue
            acked.append([user, message_id])
    print(json.dumps({"acked": acked, "refused": refused}))
    return 0


def stream(host: str, port: int, users: list[str], *, tag: str, stop_file: str, pause: float) -> int:
    pending: deque[tuple[str, str, int]] = deque()
    n = 0
    while not os.path.exists(stop_file):
        try:
            with smtplib.LMTP(host, port, timeout=10) as lmtp:
                _emit({"event": "connected"})
                while not os.path.exists(stop_file):
                    if pending:
                        user, message_id, number = pending.popleft()
                    else:
                        user, message_id, number = users[n % len(users)], f"<{tag}.{n}@mailshard.test>", n
                        n += 1
                    try:
                        refused = lmtp.sendmail(SENDER, [user], _message(user, message_id, number))
                    except (smtplib.SMTPException, OSError) as exc:
                        pending.append((user, message_id, number))
                        _emit({"event": "deferred", "user": user, "id": message_id, "error": str(exc)[:200]})
                        raise
                    if refused:
                        pending.append((user, message_id, number))
                        _emit({"event": "deferred", "user": user, "id": message_id, "error": str(refused)[:200]})
                        raise smtplib.SMTPException("refused")
                    _emit({"event": "acked", "user": user, "id": message_id})
                    if pause:
                        time.sleep(pause)
        except (smtplib.SMTPException, OSError) as exc:
            _emit({"event": "session", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            time.sleep(0.2)
    _emit({"event": "done", "pending": [[u, m] for u, m, _ in pending]})
    return 0


_FETCHED = re.compile(rb"UID (\d+)")
_MESSAGE_ID = re.compile(rb"message-id:\s*(<[^>]+>)", re.IGNORECASE)


def _inbox(host: str, port: int, user: str, password: str) -> dict[str, object]:
    imap = imaplib.IMAP4(host, port, timeout=30)
    try:
        imap.login(user, password)
        typ, data = imap.select("INBOX", readonly=True)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT INBOX: {data!r}")
        exists = int(data[0] or b"0")
        _, values = imap.response("UIDVALIDITY")
        uidvalidity = int(values[-1] or b"0")
        messages: dict[str, str] = {}
        # An empty mailbox has no message 1, and some servers refuse the range then.
        _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])") if exists else ("OK", [])
        for item in data:
            if isinstance(item, tuple):
                uid, header = _FETCHED.search(item[0]), _MESSAGE_ID.search(item[1])
                if uid and header:
                    messages[uid.group(1).decode()] = header.group(1).decode()
        return {"uidvalidity": uidvalidity, "messages": messages}
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def inventory(host: str, port: int, credentials: list[str]) -> int:
    result: dict[str, object] = {}
    for pair in credentials:
        user, password = pair.split(":", 1)
        try:
            result[user] = _inbox(host, port, user, password)
        except (imaplib.IMAP4.error, OSError) as exc:
            result[user] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


def _login_works(host: str, port: int, user: str, password: str) -> str | None:
    """None when a login and SELECT INBOX succeed, else why not."""
    try:
        imap = imaplib.IMAP4(host, port, timeout=5)
        try:
            imap.login(user, password)
            typ, data = imap.select("INBOX")
            return None if typ == "OK" else f"SELECT: {data!r}"
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()
    except (imaplib.IMAP4.error, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def watch(host: str, port: int, credential: str, stop_file: str, interval: float) -> int:
    """Logins every `interval` until the stop file appears; a line at each change between served and refused."""
    user, password = credential.split(":", 1)
    served: bool | None = None
    while not os.path.exists(stop_file):
        error = _login_works(host, port, user, password)
        if (error is None) != served:
            served = error is None
            _emit({"event": "served" if served else "refused", "error": error})
        time.sleep(interval)
    _emit({"event": "done"})
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mail_client")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("deliver", "stream", "inventory", "watch"):
        command = commands.add_parser(name)
        command.add_argument("--host", required=True)
        command.add_argument("--port", type=int, default=24 if name in ("deliver", "stream") else 143)
    commands.choices["deliver"].add_argument("--count", type=int, required=True)
    commands.choices["deliver"].add_argument("--tag", required=True)
    commands.choices["deliver"].add_argument("users", nargs="+")
    commands.choices["stream"].add_argument("--tag", required=True)
    commands.choices["stream"].add_argument("--stop-file", required=True)
    commands.choices["stream"].add_argument("--pause", type=float, default=0.0)
    commands.choices["stream"].add_argument("users", nargs="+")
    commands.choices["inventory"].add_argument("credentials", nargs="+", help="user:password")
    commands.choices["watch"].add_argument("--stop-file", required=True)
    commands.choices["watch"].add_argument("--interval", type=float, default=0.05)
    commands.choices["watch"].add_argument("credential", help="user:password")
    args = parser.parse_args(argv)
    if args.command == "deliver":
        return deliver(args.host, args.port, args.users, args.count, args.tag)
    if args.command == "stream":
        return stream(args.host, args.port, args.users, tag=args.tag, stop_file=args.stop_file, pause=args.pause)
    if args.command == "inventory":
        return inventory(args.host, args.port, args.credentials)
    return watch(args.host, args.port, args.credential, args.stop_file, args.interval)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
