"""The Cyrus renderer, the mbexamine parser and the syslog line parser, by value (no daemon)."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from unit_support import MEMBER_PATHS, member_config

from mailshard.agent.cyruspreload import daemon_environment
from mailshard.agent.cyrustools import (
    _split_name,
    imap_date,
    internal_name,
    mailbox_name,
    parse_journal_header,
    parse_list,
    parse_mbexamine,
)
from mailshard.agent.daemonlog import parse_line
from mailshard.backends import ProcessIdentity, ServingMode
from mailshard.backends.cyrus import CYRUS_CONF, IMAPD_CONF, CyrusSettings, delivery_user, render_cyrus, sasl_users

pytestmark = pytest.mark.unit

PATHS = MEMBER_PATHS
CONFIG = member_config("cyrus")


def render(mode: ServingMode, *, pop3: bool = True) -> dict[str, str]:
    return render_cyrus(
        CONFIG,
        mode,
        paths=PATHS,
        identity=ProcessIdentity("vmail", "vmail"),
        sync_password="sync-secret",
        settings=CyrusSettings(libexec=Path("/c/bin"), pop3=pop3),
    )


def test_master_serves_clients_and_pushes_to_the_peer() -> None:
    files = render(ServingMode.MASTER)
    imapd, cyrus = files[IMAPD_CONF], files[CYRUS_CONF]
    assert "sync_log: 1" in imapd
    assert "sync_host: 10.0.0.2\nsync_port: 2345" in imapd
    assert "sync_password: sync-secret" in imapd
    assert "sasl_pwcheck_method: auxprop" in imapd
    assert "alwaystrue" not in imapd
    assert "configdirectory: /d/state" in imapd
    assert "partition-default: /d/mail" in imapd
    assert 'imap cmd="/c/bin/imapd -C /d/conf/imapd.conf" listen="127.0.0.1:1143"' in cyrus
    assert 'lmtp cmd="/c/bin/lmtpd -C /d/conf/imapd.conf" listen="/d/state/socket/lmtp"' in cyrus
    assert 'pop3 cmd="/c/bin/pop3d -C /d/conf/imapd.conf" listen="127.0.0.1:1110"' in cyrus
    assert 'sieve cmd="/c/bin/timsieved -C /d/conf/imapd.conf" listen="127.0.0.1:1419"' in cyrus
    assert "sievedir: /d/state/sieve" in imapd
    assert ":1024" not in cyrus  # the member's LMTP port belongs to the agent's journaling front
    assert 'syncclient cmd="/c/bin/sync_client -C /d/conf/imapd.conf -r"' in cyrus
    assert "syncserver" not in cyrus


def test_a_master_without_pop3d_serves_everything_else() -> None:
    cyrus = render(ServingMode.MASTER, pop3=False)[CYRUS_CONF]
    assert "pop3d" not in cyrus
    assert "bin/imapd" in cyrus
    assert "bin/timsieved" in cyrus


def test_replica_only_receives_replication() -> None:
    files = render(ServingMode.REPLICA)
    imapd, cyrus = files[IMAPD_CONF], files[CYRUS_CONF]
    assert "sync_log: 0" in imapd
    assert "sync_password" not in imapd
    assert 'syncserver cmd="/c/bin/sync_server -C /d/conf/imapd.conf" listen="127.0.0.1:1345"' in cyrus
    for daemon in ("imapd", "lmtpd", "pop3d", "timsieved"):
        assert f"bin/{daemon}" not in cyrus
    assert "sync_client" not in cyrus


def test_fenced_listens_on_nothing() -> None:
    cyrus = render(ServingMode.FENCED)[CYRUS_CONF]
    assert "listen=" not in cyrus
    assert "sync_client" not in cyrus


def test_sasl_users_needs_plain_passwords() -> None:
    assert sasl_users("# c\nAlice@x.test:{PLAIN}pw::::::\n\nbob:pw2\n") == [("alice@x.test", "pw"), ("bob", "pw2")]
    with pytest.raises(ValueError, match="SHA512-CRYPT"):
        sasl_users("alice:{SHA512-CRYPT}$6$abc::::::\n")


MBEXAMINE = """\
Examining user/alice@x.test... Mailbox Header Info:
  Number of Messages: 2  Mailbox Size: 10 bytes  Annotations Size: 0 bytes
  UIDValidity: 1700000000  Last UID: 3
  Highest Mod Sequence: 7
 Message Info:
      > INTERNALFLAGS:      > SYSTEMFLAGS: FLAG_SEEN
      > INTERNALFLAGS:      > SYSTEMFLAGS:
Examining user/alice/Sent@x.test... Mailbox Header Info:
  Number of Messages: 0  Mailbox Size: 0 bytes  Annotations Size: 0 bytes
  UIDValidity: 1700000001  Last UID: 0
  Highest Mod Sequence: 1
"""


def test_parse_mbexamine() -> None:
    inbox, sent = parse_mbexamine(MBEXAMINE)
    assert (inbox.user, inbox.mailbox, inbox.uidvalidity, inbox.uidnext, inbox.messages, inbox.unseen) == (
        "alice@x.test",
        "INBOX",
        1700000000,
        4,
        2,
        1,
    )
    assert (sent.mailbox, sent.uidnext, sent.messages, sent.highestmodseq) == ("Sent", 1, 0, 1)


@pytest.mark.parametrize(
    ("datagram", "level", "text"),
    [
        (b"<22>mailshard-s1-a/imapd[42]: login: alice", logging.INFO, "mailshard-s1-a/imapd[42]: login: alice"),
        (b"<19>master[7]: DBERROR: x\n", logging.ERROR, "master[7]: DBERROR: x"),
        (b"<20>lmtpd[8]: slow", logging.WARNING, "lmtpd[8]: slow"),
        (b"<18>master[9]: cannot find executable", logging.CRITICAL, "master[9]: cannot find executable"),
        (b"<23>imapd[1]: detail", logging.DEBUG, "imapd[1]: detail"),
        (b"no priority \xff", logging.INFO, "no priority \ufffd"),
    ],
)
def test_syslog_lines_keep_their_severity(datagram: bytes, level: int, text: str) -> None:
    assert parse_line(datagram) == (level, text)


def test_the_daemon_environment_preloads_the_library_before_any_other() -> None:
    env = daemon_environment({"LD_PRELOAD": "/x.so", "PATH": "/bin"}, Path("/s.so"), Path("/d/run/syslog"))
    assert env == {"LD_PRELOAD": "/s.so /x.so", "PATH": "/bin", "MAILSHARD_SYSLOG_SOCKET": "/d/run/syslog"}


@pytest.mark.parametrize(
    ("address", "user"),
    [
        ("alice@x.test", "alice@x.test"),
        ("Alice@X.Test", "alice@x.test"),
        ("alice+lists@x.test", "alice@x.test"),
        ("bob", "bob"),
        ("Bob+a+b", "bob"),
    ],
)
def test_a_recipient_delivers_to_its_lowercased_user_without_detail(address: str, user: str) -> None:
    assert delivery_user(address) == user


@pytest.mark.parametrize(
    ("user", "mailbox", "name"),
    [
        ("alice@x.test", "INBOX", "user/alice@x.test"),
        ("alice@x.test", "Sent", "user/alice/Sent@x.test"),
        ("alice@x.test", "Archive/2024", "user/alice/Archive/2024@x.test"),
        ("bob", "INBOX", "user/bob"),
    ],
)
def test_mailbox_names_round_trip_through_mbexamine_names(user: str, mailbox: str, name: str) -> None:
    assert mailbox_name(user, mailbox) == name
    assert _split_name(name) == (user, mailbox)


@pytest.mark.parametrize(
    ("user", "mailbox", "name"),
    [
        ("alice@x.test", "INBOX", "x.test!user.alice"),
        ("alice@x.test", "Sent", "x.test!user.alice.Sent"),
        ("alice@x.test", "Archive/2024", "x.test!user.alice.Archive.2024"),
        ("john.doe@x.test", "v1.2", "x.test!user.john^doe.v1^2"),
        ("bob", "INBOX", "user.bob"),
    ],
)
def test_a_mailboxes_internal_name_is_the_one_mailboxes_db_keys_it_by(user: str, mailbox: str, name: str) -> None:
    assert internal_name(user, mailbox) == name


def test_an_imap_list_answer_gives_the_selectable_mailboxes_quoted_as_sent() -> None:
    listing: list[bytes | tuple[bytes, bytes] | None] = [
        b'(\\HasNoChildren) "/" INBOX',
        b'(\\HasChildren \\Noselect) "/" Archive',
        b'(\\HasNoChildren) "/" "Archive/Old mail"',
        (b'(\\HasNoChildren) "/" {9}', b'Odd"name\\'),
        None,
    ]
    assert parse_list(listing) == ["INBOX", '"Archive/Old mail"', '"Odd\\"name\\\\"']


def test_journal_ids_come_from_the_fetched_headers_only() -> None:
    fetched: list[bytes | tuple[bytes, bytes] | None] = [
        (b"1 (UID 7 BODY[HEADER.FIELDS (X-Mailshard-Journal)] {48}", b"X-Mailshard-Journal: s1-a.17.abc\r\n\r\n"),
        b")",
        (b"2 (UID 8 BODY[HEADER.FIELDS (X-Mailshard-Journal)] {2}", b"\r\n"),
        (b"3 (UID 9 BODY[HEADER.FIELDS (X-Mailshard-Journal)] {40}", b"x-mailshard-journal:\ts1-a.18\r\n\r\n"),
    ]
    assert parse_journal_header(fetched) == {"s1-a.17.abc", "s1-a.18"}


def test_imap_dates_are_english_whatever_the_locale() -> None:
    assert imap_date(datetime.date(2026, 12, 2)) == "02-Dec-2026"
    assert imap_date(datetime.date(2027, 1, 31)) == "31-Jan-2027"
