"""The agent's HTTP API (aiohttp).

Why this module exists: it is the only way the operator (and a human) asks a
member what it is and tells it what to become. Routes are thin: they check the
bearer token and call the ``Agent``.

- ``GET /healthz``: no auth; 200 when the daemon is up, 503 otherwise.
- ``GET /metrics``: no auth (no user data in it); Prometheus text format.
- ``GET /status``: bearer token; the full snapshot (it names users).
- ``POST /promote`` (``?force=true`` to promote while the peer claims master),
  ``/demote``, ``/fence``, ``/unfence``: bearer token; 200 with the new
  status, 409 when the change is refused, 401 without a valid token.
- ``POST /uidnext`` with ``{"floors": {"user/mailbox": n}}`` and optionally
  ``"create": {"user/mailbox": {"uidvalidity": v, "uidnext": n}}``: bearer
  token; a master raises each mailbox's UIDNEXT to at least ``n``, and creates
  each missing mailbox of ``create`` under UIDVALIDITY ``v`` (a failover step).
- ``POST /journal``: bearer token; the master's LMTP front stores one delivery
  in the replica's journal (the message as body, its entry as JSON in the
  ``X-Mailshard-Journal-Entry`` header); 409 unless this member is a replica.
- ``POST /replay``: bearer token; a new master delivers the journal entries
  its store lacks (a failover step).
- ``POST /reseed``: bearer token; a demoted, fenced member makes its store
  equal to the master's, then rejoins as replica (a failover step).
- ``POST /push``: bearer token; a Cyrus master pushes every user, whole, to
  its replica (what a re-seeded Cyrus replica asks of it); 501 on Dovecot.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailshard.agent.decide import Action
from mailshard.agent.journal import MAX_MESSAGE_BYTES
from mailshard.agent.metrics import CONTENT_TYPE
from mailshard.agent.service import Agent, NewMailbox

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AGENT_KEY = web.AppKey("agent", Agent)


def _authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and bool(token) and hmac.compare_digest(presented.strip(), token)


def _require_token(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        agent = request.app[AGENT_KEY]
        if not _authorized(request, agent.settings.token):
            return web.json_response(
                {"error": "missing or invalid bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="mailshard-agent"'},
            )
        return await handler(request)

    return wrapped


async def healthz(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT_KEY]
    up = agent.supervisor.up
    return web.json_response({"daemonUp": up, "mode": agent.mode.value}, status=200 if up else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT_KEY]
    body = agent.metrics.render() if agent.metrics is not None else b""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@_require_token
async def status(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[AGENT_KEY].status())


def _action_handler(action: Action) -> Handler:
    @_require_token
    async def handler(request: web.Request) -> web.StreamResponse:
        force = request.query.get("force", "").lower() in {"1", "true", "yes"}
        code, body = await request.app[AGENT_KEY].act(action, force=force)
        return web.json_response(body, status=code)

    return handler


UIDNEXT_BODY = (
    '{"floors": {"user/mailbox": uidnext, ...}, "create": {"user/mailbox": {"uidvalidity": v, "uidnext": n}, ...}}'
)
UID_MAX = 2**32 - 1
"""UIDs and UIDVALIDITY are unsigned 32-bit numbers in IMAP."""


def _uid32(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= UID_MAX:
        raise ValueError(f"expected a number from 1 to {UID_MAX}, got {value!r}")
    return value


def parse_uidnext_request(body: Any) -> tuple[dict[str, int], dict[str, NewMailbox]]:
    """The floors and the mailboxes to create of a ``POST /uidnext`` body; ValueError or a lookup error if malformed.

    ``create`` came later than ``floors`` and is optional, so an older operator's body still reads.
    """
    floors = {str(key): int(value) for key, value in body["floors"].items()}
    create = {}
    for key, value in (body.get("create") or {}).items():
        user, _, mailbox = str(key).partition("/")
        if not user or not mailbox:
            raise ValueError(f"a mailbox to create is named user/mailbox, got {key!r}")
        create[str(key)] = NewMailbox(uidvalidity=_uid32(value["uidvalidity"]), uidnext=_uid32(value["uidnext"]))
    return floors, create


@_require_token
async def raise_uidnext(request: web.Request) -> web.StreamResponse:
    try:
        floors, create = parse_uidnext_request(await request.json())
    except (ValueError, KeyError, TypeError, AttributeError):
        expected = (
            '{"floors": {"user/mailbox": uidnext, ...}, "create": {"user/mailbox": {"uidvalidity": v, "uidnext": n}}}'
        )
        return web.json_response({"error": f"expected {expected}"}, status=400)
    code, answer = await request.app[AGENT_KEY].raise_uidnext(floors, create)
    return web.json_response(answer, status=code)


@_require_token
async def journal(request: web.Request) -> web.StreamResponse:
    meta = request.headers.get("X-Mailshard-Journal-Entry")
    if meta is None:
        return web.json_response({"error": "the X-Mailshard-Journal-Entry header is missing"}, status=400)
    code, answer = await request.app[AGENT_KEY].receive_journal(meta, await request.read())
    return web.json_response(answer, status=code)


@_require_token
async def replay(request: web.Request) -> web.StreamResponse:
    code, answer = await request.app[AGENT_KEY].replay()
    return web.json_response(answer, status=code)


@_require_token
async def reseed(request: web.Request) -> web.StreamResponse:
    code, answer = await request.app[AGENT_KEY].reseed()
    return web.json_response(answer, status=code)


@_require_token
async def push(request: web.Request) -> web.StreamResponse:
    code, answer = await request.app[AGENT_KEY].push_all()
    return web.json_response(answer, status=code)


def build_app(agent: Agent) -> web.Application:
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES + 1024 * 1024)
    app[AGENT_KEY] = agent
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    for action in Action:
        app.router.add_post(f"/{action.value}", _action_handler(action))
    app.router.add_post("/uidnext", raise_uidnext)
    app.router.add_post("/journal", journal)
    app.router.add_post("/replay", replay)
    app.router.add_post("/reseed", reseed)
    app.router.add_post("/push", push)
    return app
