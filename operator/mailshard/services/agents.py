"""The operator's client of the in-pod agents' HTTP API.

Why this module exists: every failover decision starts with a poll of both
agents and ends with a call to one of them, and both must be bounded in time:
a dead member's agent must cost a failed poll within a fraction of the poll
interval, never a stalled loop. One aiohttp session is shared by every shard
(created on the event loop that uses it), and every failure is one
`AgentCallError` saying what went wrong, in words fit for an Event.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from mailshard.failover import UidNextPlan

STATUS_TIMEOUT_SECONDS = 0.8
"""A poll must fail inside the 1 s poll interval, so a silent agent counts as one missed poll, not several."""
ACTION_TIMEOUT_SECONDS = 60.0
"""Promote and fence restart the mail daemon and wait for it; Cyrus takes a few seconds."""

RESEED_TIMEOUT_SECONDS = 600.0
"""A re-seed copies what the member lacks, a whole user when its copy had to be set aside, while the master
takes mail: minutes under load. With the action bound, a re-seed in CI outlived every call, each retry waited
behind the one before, and a switchover stayed unfinished for 476 s; the agent bounds each user's attempts
itself (`mailshard.agent.service.reseed_attempt_seconds`), so this only guards against an agent that hangs."""


def uidnext_body(plan: UidNextPlan) -> dict[str, Any]:
    """The `POST /uidnext` body that carries out a RaiseUidNext plan (see `mailshard.agent.http`)."""
    create = {name: {"uidvalidity": new.uidvalidity, "uidnext": new.uidnext} for name, new in plan.create.items()}
    return {"floors": dict(plan.floors), "create": create}


class AgentCallError(RuntimeError):
    """The agent could not be reached, refused, or answered with an error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentClient:
    """Calls agents at `http://<pod IP>:<agent port>` with the shard's bearer token."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive across polls of a dead pod's address; a fresh connection fails fast (refused).
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, address: str, token: str) -> Any:
        return await self._call("GET", address, "/status", token, limit=STATUS_TIMEOUT_SECONDS)

    async def act(self, address: str, token: str, action: str, *, force: bool = False) -> Any:
        """POST /promote, /demote, /fence, /unfence or /replay."""
        path = f"/{action}" + ("?force=true" if force else "")
        return await self._call("POST", address, path, token, limit=ACTION_TIMEOUT_SECONDS)

    async def reseed(self, address: str, token: str) -> Any:
        """POST /reseed, with the re-seed's own bound (see `RESEED_TIMEOUT_SECONDS`)."""
        return await self._call("POST", address, "/reseed", token, limit=RESEED_TIMEOUT_SECONDS)

    async def raise_uidnext(self, address: str, token: str, plan: UidNextPlan) -> Any:
        body = uidnext_body(plan)
        return await self._call("POST", address, "/uidnext", token, limit=ACTION_TIMEOUT_SECONDS, body=body)

    async def _call(self, method: str, address: str, path: str, token: str, *, limit: float, body: Any = None) -> Any:
        url = f"http://{address}{path}"
        try:
            async with self._client().request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                if response.status != 200:
                    detail = answer.get("error") if isinstance(answer, dict) else None
                    raise AgentCallError(
                        f"{method} {url} answered HTTP {response.status}" + (f": {detail}" if detail else ""),
                        status=response.status,
                    )
                return answer
        except (aiohttp.ClientError, TimeoutError) as error:
            raise AgentCallError(f"{method} {url} failed: {error or type(error).__name__}") from error
