"""Shell entry point of the harness: build, start, inspect and stop control-plane instances and the real node."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from mailshard_harness import build, versions
from mailshard_harness.cluster import ClusterConfig, ClusterState, ControlPlane, reap_stale, runs_root
from mailshard_harness.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailshard-harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build_cmd = commands.add_parser("build", help="build (or find cached) pinned binaries and install etcd")
    build_cmd.add_argument(
        "--with-kubelet", action="store_true", help="also build kubelet, kube-proxy and CoreDNS (the real-node tier)"
    )
    up = commands.add_parser("up", help="start a control plane and print its KUBECONFIG")
    up.add_argument("--name", default="default", help="instance name (its dir is <cache>/run/<name>)")
    up.add_argument("--nodes", type=int, default=3, help="number of KWOK nodes")
    up.add_argument("--pods-per-node", type=int, default=1000)
    up.add_argument("--api-port", type=int, default=None, help="fixed apiserver port (default: a free one)")
    down = commands.add_parser("down", help="stop an instance and remove its data dir")
    down.add_argument("--name", default="default")
    commands.add_parser("status", help="list instances and their processes")
    commands.add_parser("reap", help="stop instances whose owner died")
    kubeconfig = commands.add_parser("kubeconfig", help="print the kubeconfig path of an instance")
    kubeconfig.add_argument("--name", default="default")
    commands.add_parser("demo", help="control plane + operator + examples, waited until Ready")
    images = commands.add_parser("images", help="build the operator, dovecot and cyrus images with podman")
    images.add_argument("--only", action="append", help="build only this image (repeatable)")
    images.add_argument("--rebuild-base", action="store_true", help="debootstrap the base image again")
    node_up = commands.add_parser("node-up", help="start the machine's real node (root): control plane, kubelet, DNS")
    node_up.add_argument(
        "--subnet", default=None, help="the node bridge subnet (default: MAILSHARD_NODE_SUBNET or built in)"
    )
    commands.add_parser("node-down", help="stop the real node and check it left nothing behind")
    commands.add_parser("node-status", help="show the real node's processes, timings and kubeconfig")
    commands.add_parser("node-images", help="import the images `make images` built last into the running node")
    provisioner = commands.add_parser("provisioner", help="(internal) run the local-volume provisioner")
    provisioner.add_argument("--kubeconfig", required=True)
    provisioner.add_argument("--volumes-dir", default=None, help="create and remove each PV's directory here")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        started = time.monotonic()
        wanted = versions.ALL_BINARIES if args.with_kubelet else versions.CONTROL_PLANE_BINARIES
        for name, path in build.ensure_binaries(wanted).items():
            print(f"{name}: {path}")
        print(f"etcd: {build.ensure_etcd()}")
        print(f"done in {time.monotonic() - started:.0f} s")
    elif args.command == "up":
        plane = ControlPlane.start(
            ClusterConfig(name=args.name, nodes=args.nodes, pods_per_node=args.pods_per_node, api_port=args.api_port)
        )
        print(f"export KUBECONFIG={plane.kubeconfig}")
    elif args.command == "down":
        directory = runs_root() / args.name
        if ClusterState.load(directory) is None:
            print(f"no instance named {args.name!r} (nothing to stop)")
            return 0
        ControlPlane.attach(directory).stop()
        print(f"stopped {args.name}")
    elif args.command == "status":
        root = runs_root()
        for directory in sorted(root.iterdir()) if root.is_dir() else []:
            state = ClusterState.load(directory)
            if state is None:
                continue
            alive = {p.name for p in state.running()}
            owner = "shell" if state.owner_pid is None else f"pid {state.owner_pid}"
            stale = "" if state.owner_alive() else " (STALE: owner gone)"
            print(f"{directory.name}: {state.api_url} owner={owner}{stale} kubeconfig={state.kubeconfig}")
            for record in state.processes:
                print(
                    f"  {record.name:<24} pid {record.pid:<8} {'up' if record.name in alive else 'DOWN'}  {record.log}"
                )
    elif args.command == "reap":
        for directory in reap_stale():
            print(f"reaped {directory}")
    elif args.command == "kubeconfig":
        print(ClusterState(directory=runs_root() / args.name).kubeconfig)
    elif args.command == "images":
        from mailshard_harness.images import IMAGES, build_images, image_name

        for name, seconds in build_images(args.only or IMAGES, rebuild_base=args.rebuild_base).items():
            print(f"{image_name(name)}: built in {seconds:.0f} s")
    elif args.command == "demo":
        from mailshard_harness.demo import run_demo

        return run_demo()
    elif args.command in ("node-up", "node-down", "node-status", "node-images"):
        return _node_command(args)
    elif args.command == "provisioner":
        from mailshard_harness.storage import main as provisioner_main

        return provisioner_main(args.kubeconfig, args.volumes_dir)
    return 0


def _node_command(args: argparse.Namespace) -> int:
    from mailshard_harness.node import NodeConfig, NodeHarness, NodeState, node_root

    if args.command == "node-up":
        config = NodeConfig()
        if args.subnet:
            config.subnet = args.subnet
        # A SIGTERM (a CI timeout, `kill`) tears the node down like Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        node = NodeHarness.start(config)
        for name, seconds in node.state.timings.items():
            print(f"{name}: {seconds} s")
        print(f"export KUBECONFIG={node.kubeconfig}")
    elif args.command == "node-down":
        state = NodeState.load(node_root() / "run" / "node-state.json")
        node = NodeHarness(node_root(), state or NodeState())
        if not node.exists():
            print("no node on this machine (nothing to stop)")
            return 0
        started = time.monotonic()
        problems = node.stop()
        print(f"node stopped in {time.monotonic() - started:.1f} s")
        if problems:
            print("the host differs from before the node started:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print("left nothing behind: processes, mounts, iptables chains, bridge, cgroups and sysctls as before")
    elif args.command == "node-images":
        running = NodeHarness.running()
        if running is None:
            print("no node running (start one with `make e2e-up`)")
            return 1
        took = running.import_images()
        print("every image was already current" if took is None else f"imported in {took:.1f} s")
    else:
        running = NodeHarness.running()
        if running is None:
            print("no node running")
            return 0
        for record in running.state.processes:
            print(f"{record.name:<24} pid {record.pid:<8} {record.log}")
        for name, seconds in running.state.timings.items():
            print(f"{name}: {seconds} s")
        rss = running.rss_bytes()
        print(f"RSS: {sum(rss.values()) / 2**20:.0f} MiB")
        print(f"export KUBECONFIG={running.kubeconfig}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
