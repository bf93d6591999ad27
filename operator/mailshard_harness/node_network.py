"""The real node's network: its own bridge, a CNI config for it, and the iptables chains it leaves.

Pods must reach each other, the apiserver and Services, and nothing else: this
machine may only talk to loopback and to network namespaces it made. So the
harness creates one bridge (`mailshard0`, a private /24, its address the node's
InternalIP and the apiserver's bind address), and the CNI bridge plugin plugs
every pod into it with host-local IPAM, a route to the Service CIDR through the
bridge and no default route. No masquerading, port mapping or firewall plugin:
CNI itself adds no iptables rules.

kubelet and kube-proxy do add iptables chains (KUBE-*) and jumps to them from
the built-in chains, in both address families. `remove_new_chains` deletes
exactly the KUBE-* chains that were not there before the node started, and the
rules that jump to them.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailshard_harness.errors import HarnessError

BRIDGE = "mailshard0"
DEFAULT_SUBNET = "10.213.77.0/24"
"""Not podman's 10.88.0.0/16, nor docker's 172.17.0.0/16, nor kind's or the Service CIDR."""
CNI_NETWORK = "mailshard-node"
CNI_PLUGIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
BRIDGE_ALIAS_PREFIX = "mailshard-harness:"
"""The bridge's ifalias names the node directory that made it, so a start can prove it is ours."""
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-")
FAMILIES = {"ipv4": "iptables", "ipv6": "ip6tables"}


@dataclass(frozen=True)
class NodeNetwork:
    """The bridge's subnet and the addresses derived from it."""

    subnet: str = DEFAULT_SUBNET
    bridge: str = BRIDGE

    @property
    def network(self) -> ipaddress.IPv4Network:
        network = ipaddress.ip_network(self.subnet)
        if not isinstance(network, ipaddress.IPv4Network) or network.num_addresses < 16:
            raise HarnessError(f"node subnet {self.subnet} must be an IPv4 network of at least /28")
        return network

    @property
    def gateway(self) -> str:
        """The bridge's own address: node InternalIP, apiserver bind address, pods' gateway to Services."""
        return str(self.network.network_address + 1)

    def cni_config(self, *, service_cidr: str, ipam_dir: Path) -> dict[str, Any]:
        """The conflist containerd's CRI plugin hands to the bridge plugin (pure)."""
        hosts = list(self.network.hosts())
        return {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    # A pod reaching itself through its own Service comes back on its own port.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(ipam_dir),
                        "ranges": [
                            [
                                {
                                    "subnet": self.subnet,
                                    "rangeStart": str(hosts[9]),
                                    "rangeEnd": str(hosts[-1]),
                                    "gateway": self.gateway,
                                }
                            ]
                        ],
                        # Services only; there is no default route out of a pod.
                        "routes": [{"dst": service_cidr}],
                    },
                }
            ],
        }


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HarnessError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def _links() -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = json.loads(_ip("-j", "-d", "link").stdout or "[]")
    return links


def bridge_owner(bridge: str = BRIDGE) -> str | None:
    """The node directory named in the bridge's alias; "" if it exists without ours; None if absent."""
    for link in _links():
        if link["ifname"] == bridge:
            alias = str(link.get("ifalias", ""))
            return alias.removeprefix(BRIDGE_ALIAS_PREFIX) if alias.startswith(BRIDGE_ALIAS_PREFIX) else ""
    return None


def check_subnet_free(net: NodeNetwork) -> None:
    """Refuse a subnet that overlaps any address or route on another interface."""
    for address in json.loads(_ip("-j", "addr").stdout or "[]"):
        if address["ifname"] == net.bridge:
            continue
        for info in address.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            other = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
            if other.overlaps(net.network):
                raise HarnessError(
                    f"node subnet {net.subnet} overlaps {other} on {address['ifname']}; "
                    "pick another with MAILSHARD_NODE_SUBNET"
                )
    for route in json.loads(_ip("-j", "route").stdout or "[]"):
        if route.get("dev") == net.bridge or route["dst"] == "default":
            continue
        other = ipaddress.ip_network(route["dst"], strict=False)
        if other.overlaps(net.network):
            raise HarnessError(
                f"node subnet {net.subnet} overlaps the route to {other} via {route.get('dev')}; "
                "pick another with MAILSHARD_NODE_SUBNET"
            )


def create_bridge(net: NodeNetwork, owner: str) -> None:
    """The bridge, its alias naming `owner`, the gateway address, up."""
    _ip("link", "add", net.bridge, "type", "bridge")
    _ip("link", "set", net.bridge, "alias", BRIDGE_ALIAS_PREFIX + owner)
    _ip("addr", "add", f"{net.gateway}/{net.network.prefixlen}", "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")


def delete_bridge(net: NodeNetwork, owner: str) -> None:
    """Delete the bridge if (and only if) its alias says `owner` made it; veths left on it go with their netns."""
    if bridge_owner(net.bridge) != owner:
        return
    for link in _links():
        if link.get("master") == net.bridge:
            _ip("link", "del", link["ifname"], check=False)
    _ip("link", "del", net.bridge, check=False)


def write_cni_config(net: NodeNetwork, conf_dir: Path, *, service_cidr: str, ipam_dir: Path) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"10-{CNI_NETWORK}.conflist"
    path.write_text(json.dumps(net.cni_config(service_cidr=service_cidr, ipam_dir=ipam_dir), indent=2))
    return path


# ------------------------------------------------------------------ iptables


def _save(family: str) -> str:
    result = subprocess.run([f"{FAMILIES[family]}-save"], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else ""


def _parse(dump: str) -> dict[str, tuple[list[str], list[str]]]:
    """table → (chain names, rule lines) from an iptables-save dump."""
    tables: dict[str, tuple[list[str], list[str]]] = {}
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = ([], [])
        elif line.startswith(":") and table:
            tables[table][0].append(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            tables[table][1].append(line)
    return tables


def owned_chains() -> list[str]:
    """`<family> <table> <chain>` of every KUBE-*/CNI-* chain now present, for baselines and snapshots."""
    found = []
    for family in FAMILIES:
        for table, (chains, _) in _parse(_save(family)).items():
            found += [f"{family} {table} {c}" for c in chains if c.startswith(OWNED_CHAIN_PREFIXES)]
    return sorted(found)


def owned_rules() -> list[str]:
    """Rules of any chain that jump to a KUBE-*/CNI-* chain, for snapshots."""
    found = []
    for family in FAMILIES:
        for table, (_, rules) in _parse(_save(family)).items():
            for rule in rules:
                words = shlex.split(rule)
                if "-j" in words and words[words.index("-j") + 1].startswith(OWNED_CHAIN_PREFIXES):
                    found.append(f"{family} {table} {rule}")
    return sorted(found)


def remove_new_chains(baseline: list[str], prefixes: tuple[str, ...] = ("KUBE-",)) -> list[str]:
    """Delete chains with `prefixes` that are not in `baseline`, and every rule jumping to them.

    One `iptables-restore --noflush` transaction per family: the jumps are
    deleted, then the chains flushed (which drops jumps between them), then
    deleted. Returns what was removed.
    """
    keep = set(baseline)
    removed = []
    for family, command in FAMILIES.items():
        script: list[str] = []
        for table, (chains, rules) in _parse(_save(family)).items():
            doomed = [c for c in chains if c.startswith(prefixes) and f"{family} {table} {c}" not in keep]
            if not doomed:
                continue
            script.append(f"*{table}")
            for rule in rules:
                words = shlex.split(rule)
                if words[1] not in doomed and "-j" in words and words[words.index("-j") + 1] in doomed:
                    script.append("-D" + rule[2:])
            script += [f"-F {c}" for c in doomed]
            script += [f"-X {c}" for c in doomed]
            script.append("COMMIT")
            removed += [f"{family} {table} {c}" for c in doomed]
        if script:
            result = subprocess.run(
                [f"{command}-restore", "--noflush"],
                input="\n".join(script) + "\n",
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise HarnessError(f"removing the node's {command} chains failed: {result.stderr.strip()}")
    return removed
