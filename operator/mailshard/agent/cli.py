"""Command line and process wiring of the agent: ``python -m mailshard.agent``.

Why this module exists: it turns arguments into ``AgentSettings``, sets up
logging to stdout, runs the agent and its HTTP server on one event loop, and
turns SIGTERM/SIGINT into a clean shutdown (daemon stopped, exit 0). Fatal
start-up problems (no token, a user to run as that does not exist, a port in
use) exit with status 2 and one line saying why. A pod's shard.json that is
missing, unreadable or invalid is not fatal: the agent still serves its API
(on the default port, with the default token file) and reports the problem as
its config error, running no daemon, so the operator and a human can see why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pydantic
from aiohttp import web

from mailshard.agent.http import build_app
from mailshard.agent.identity import IdentityError, resolve_run_as
from mailshard.agent.service import Agent, AgentSettings, validation_problems
from mailshard.agent.state import RoleFile
from mailshard.agent.volume import Reserve
from mailshard.api.constants import AGENT_PORT
from mailshard.api.runtime import ShardRuntimeConfig
from mailshard.backends.config import MemberRuntimeConfig
from mailshard.backends.contract import ContractError, PodContract, member_config, pod_contract

log = logging.getLogger("mailshard.agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mailshard.agent", description="Mailshard in-pod mail agent.")
    # With no --config the agent runs as the operator's pods start it: everything comes from the
    # environment the StatefulSet sets and the shard.json it mounts (backends.contract).
    parser.add_argument("--config", type=Path, help="runtime config JSON of this member (default: from the pod)")
    parser.add_argument("--role-file", type=Path, help="file holding 'master' or 'replica'")
    parser.add_argument("--data-dir", type=Path, help="directory for config, sockets, state, mail")
    parser.add_argument("--listen", default=None, help="HOST:PORT of the agent API (default 0.0.0.0:8080)")
    parser.add_argument("--token-file", type=Path, help="file with the API bearer token")
    parser.add_argument("--run-as", default=None, help="user for the daemon when the agent is root (default vmail)")
    parser.add_argument("--dovecot", default="dovecot", help="dovecot binary (default %(default)s)")
    parser.add_argument("--doveadm", default="doveadm", help="doveadm binary (default %(default)s)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between observations")
    parser.add_argument(
        "--min-free-bytes",
        type=int,
        default=None,
        help="bytes kept free on the mail volume; below, no mail is taken (default: 1%% of it, at most 1 GiB)",
    )
    parser.add_argument("--users-file", type=Path, help="passwd-file of the users (pod mode; default from the pod)")
    parser.add_argument(
        "--cyrus-root",
        type=Path,
        default=None,
        help="prefix Cyrus is installed under (default $MAILSHARD_CYRUS_ROOT or /)",
    )
    return parser


def _read_shard(contract: PodContract, users_file: Path) -> tuple[ShardRuntimeConfig, MemberRuntimeConfig]:
    """The pod's shard.json and this member's config from it; ValueError with a one-line reason."""
    path = contract.shard_config
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"shard config {path} is unreadable: {exc}") from exc
    try:
        shard = ShardRuntimeConfig.from_json(text)
    except pydantic.ValidationError as exc:
        raise ValueError(f"shard config {path} is invalid: {validation_problems(exc)}") from exc
    try:
        return shard, member_config(shard, contract.member, users_file=users_file)
    except ContractError as exc:
        raise ValueError(f"shard config {path}: {exc}") from exc


def _from_pod(args: argparse.Namespace, environment: dict[str, str]) -> str | None:
    """Fill the arguments from the pod: shard.json, the member's name, its initial role, its volume.

    The member's own runtime config is written onto its volume for the backend
    renderers; the role file there is seeded from the pod's initial role only
    when it does not exist yet, because after a failover the file is the truth
    and the pod's label may predate it. Returns why shard.json cannot be used,
    if it cannot: then no runtime config is left on the volume (a stale one
    from an earlier start must not be served) and the defaults fill the rest.
    """
    contract = pod_contract(environment)
    data_dir = args.data_dir or contract.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / contract.member_config_file.name
    role_file = args.role_file or data_dir / contract.role_file.name
    if not role_file.exists() and contract.initial_role is not None:
        RoleFile(role_file).write(contract.initial_role)
    args.config = config_path
    args.data_dir = data_dir
    args.role_file = role_file
    try:
        shard, member = _read_shard(contract, args.users_file or contract.users_file)
    except ValueError as exc:
        config_path.unlink(missing_ok=True)
        defaults = ShardRuntimeConfig.model_fields["agent_token_file"].default
        args.token_file = args.token_file or Path(defaults)
        args.listen = args.listen or f"0.0.0.0:{AGENT_PORT}"
        return str(exc)
    config_path.write_text(member.model_dump_json(by_alias=True), encoding="utf-8")
    args.token_file = args.token_file or Path(shard.agent_token_file)
    args.listen = args.listen or f"0.0.0.0:{shard.ports.agent}"
    return None


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(settings: AgentSettings, host: str, port: int) -> int:
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(agent), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        await runner.cleanup()
        return 2
    log.info("agent API on http://%s:%d", host, port)
    await agent.start()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await agent.stop()
        await runner.cleanup()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config_problem = None
    try:
        if args.config is None:
            config_problem = _from_pod(args, dict(os.environ))
        elif args.role_file is None or args.data_dir is None or args.token_file is None:
            raise ValueError("--config needs --role-file, --data-dir and --token-file")
        host, port = _split_listen(args.listen or "0.0.0.0:8080")
        token = args.token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token file {args.token_file} is empty")
        run_as = resolve_run_as(args.run_as)
    except (OSError, ValueError, IdentityError, pydantic.ValidationError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    settings = AgentSettings(
        config_path=args.config,
        role_file=args.role_file,
        data_dir=args.data_dir.absolute(),
        token=token,
        run_as=run_as,
        dovecot_binary=args.dovecot,
        doveadm_binary=args.doveadm,
        poll_interval=args.poll_interval,
        reserve=Reserve(args.min_free_bytes),
        config_problem=config_problem,
        **({"cyrus_root": args.cyrus_root} if args.cyrus_root is not None else {}),
    )
    return asyncio.run(serve(settings, host, port))
