"""Talks to the other member of the pair: its replication server and its agent.

Why this module exists: two checks that only the network can answer. The
replication probe logs in to the peer's replication server exactly as the
daemon's own replication does: Dovecot's doveadm server with the doveadm
protocol's ``PLAIN`` handshake and ``doveadm_password``, Cyrus's
``syncserver`` with ``AUTHENTICATE PLAIN`` as the replication admin. So a wrong
shared secret or an unreachable peer shows up as a named error in ``/status``
instead of only as failed syncs in a log (Cyrus's ``sync_client`` just retries
for ever, and its replica looks merely behind). The agent client reads the
peer's ``/status`` to compare mailbox states for lag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
from asyncio import StreamReader, StreamWriter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


class ProbeResult(enum.StrEnum):
    OK = "ok"
    AUTH_FAILED = "auth-failed"
    UNREACHABLE = "unreachable"
    PROTOCOL_ERROR = "protocol-error"


@dataclass(frozen=True)
class Probe:
    result: ProbeResult
    detail: str


@contextlib.asynccontextmanager
async def _connected(host: str, port: int, wait_seconds: float) -> AsyncIterator[tuple[StreamReader, StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_seconds)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def probe_doveadm(host: str, port: int, password: str, *, wait_seconds: float = 3.0) -> Probe:
    """Authenticate to a doveadm server and disconnect without running any command."""
    where = f"{host}:{port}"
    try:
        async with _connected(host, port, wait_seconds) as (reader, writer):
            credentials = base64.b64encode(b"\0doveadm\0" + password.encode()).decode()
            writer.write(f"VERSION\tdoveadm-server\t1\t0\nPLAIN\t{credentials}\n".encode())
            await writer.drain()
            greeting = await asyncio.wait_for(reader.readline(), wait_seconds)
            if greeting == b"+\n":
                return Probe(ProbeResult.OK, f"doveadm server {where} accepts us without a password")
            if greeting != b"-\n":
                return Probe(ProbeResult.PROTOCOL_ERROR, f"doveadm server {where} greeted with {greeting[:40]!r}")
            answer = await asyncio.wait_for(reader.readline(), wait_seconds)
    except (OSError, TimeoutError) as exc:
        return Probe(ProbeResult.UNREACHABLE, f"doveadm server {where} unreachable: {exc or type(exc).__name__}")
    if answer == b"+\n":
        return Probe(ProbeResult.OK, f"doveadm server {where} accepted our doveadm password")
    if answer == b"-\n":
        return Probe(
            ProbeResult.AUTH_FAILED,
            f"doveadm server {where} rejected our doveadm password: the shared replication secret differs",
        )
    return Probe(ProbeResult.PROTOCOL_ERROR, f"doveadm server {where} answered {answer[:40]!r}")


async def probe_cyrus_sync(host: str, port: int, user: str, password: str, *, wait_seconds: float = 3.0) -> Probe:
    """Authenticate to a Cyrus ``syncserver`` as ``sync_client`` does, then ``EXIT`` without syncing anything.

    The sync protocol (3.6.1): untagged capability lines ending with ``* OK``,
    then ``AUTHENTICATE PLAIN <initial response>`` answered ``OK`` or ``NO``.
    """
    where = f"{host}:{port}"
    try:
        async with _connected(host, port, wait_seconds) as (reader, writer):
            greeting = b""
            while not greeting.startswith(b"* OK"):
                greeting = await asyncio.wait_for(reader.readline(), wait_seconds)
                if not greeting.startswith(b"* "):
                    return Probe(
                        ProbeResult.PROTOCOL_ERROR, f"Cyrus sync server {where} greeted with {greeting[:40]!r}"
                    )
            credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            writer.write(f"AUTHENTICATE PLAIN {credentials}\r\n".encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), wait_seconds)
            if answer.startswith(b"OK"):
                writer.write(b"EXIT\r\n")
                await writer.drain()
    except (OSError, TimeoutError) as exc:
        return Probe(ProbeResult.UNREACHABLE, f"Cyrus sync server {where} unreachable: {exc or type(exc).__name__}")
    if answer.startswith(b"OK"):
        return Probe(ProbeResult.OK, f"Cyrus sync server {where} accepted our replication password")
    if answer.startswith(b"NO"):
        return Probe(
            ProbeResult.AUTH_FAILED,
            f"Cyrus sync server {where} rejected our replication password: the shared replication secret differs",
        )
    return Probe(ProbeResult.PROTOCOL_ERROR, f"Cyrus sync server {where} answered {answer[:40]!r}")


class PeerAgentError(RuntimeError):
    pass


class PeerAgent:
    """The peer's agent API, with the token both members share."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, *, timeout: float = 2.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def status(self) -> dict[str, Any]:
        url = f"{self.base_url}/status"
        try:
            async with self.session.get(
                url, headers={"Authorization": f"Bearer {self.token}"}, timeout=self.timeout
            ) as response:
                if response.status == 401:
                    raise PeerAgentError(f"peer agent {url} rejected our token (401)")
                if response.status != 200:
                    raise PeerAgentError(f"peer agent {url} answered HTTP {response.status}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PeerAgentError(f"peer agent {url} unreachable: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise PeerAgentError(f"peer agent {url} sent a non-object status")
        return data

    async def push_all(self, *, within: float) -> dict[str, Any]:
        """Ask the peer, a Cyrus master, to push every user to its replica (``POST /push``); its answer."""
        url = f"{self.base_url}/push"
        try:
            async with self.session.post(
                url, headers={"Authorization": f"Bearer {self.token}"}, timeout=aiohttp.ClientTimeout(total=within)
            ) as response:
                data = await response.json(content_type=None)
                if response.status != 200:
                    raise PeerAgentError(f"peer agent {url} answered HTTP {response.status}: {data}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PeerAgentError(f"peer agent {url} failed: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise PeerAgentError(f"peer agent {url} sent a non-object answer")
        return data
