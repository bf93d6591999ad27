"""Local persistent volumes on KWOK nodes: a WaitForFirstConsumer StorageClass and its provisioner.

Mail lives on node-local disks, so a member is tied to the node its volume is
on; failover later depends on that. The harness reproduces the contract of a
real local-volume provisioner (rancher's local-path, TopoLVM) rather than
pre-creating static PVs, because the scale benchmark needs thousands of them:

1. the StorageClass binds late (`WaitForFirstConsumer`), so the real
   scheduler picks a node first and writes it on the claim as
   `volume.kubernetes.io/selected-node`;
2. this provisioner then creates a `local` PV with a required node affinity
   to exactly that node and a `claimRef` to the claim, and the real PV
   controller binds the two;
3. from then on the real scheduler must place any pod using the claim on
   that node, which is what a recreated member pod relies on;
4. a released PV of a deleted claim is deleted (reclaim policy `Delete`), and
   a claim whose request grew is expanded, as a CSI resizer would.

On KWOK nodes nothing is written to disk: they have none. On the real-node
tier (`mailshard_harness.node`) the provisioner is given a volumes directory:
it creates each PV's directory there before creating the PV (the real kubelet
bind-mounts it into the pod) and removes it when it deletes the released PV.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

STORAGE_CLASS_NAME = "mailshard-local"
PROVISIONER_NAME = "harness.mailshard.io/local"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
DEFAULT_VOLUMES_DIR = Path("/var/lib/mailshard-harness/volumes")

log = logging.getLogger("mailshard_harness.provisioner")


def storage_class_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS_NAME,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER_NAME,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
        "allowVolumeExpansion": True,
    }


def pv_for_claim(claim: dict[str, Any], node: str, volumes_dir: Path = DEFAULT_VOLUMES_DIR) -> dict[str, Any]:
    """The local PV that satisfies `claim` on `node`, at `<volumes_dir>/<claim uid>` (pure)."""
    meta = claim["metadata"]
    spec = claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {PROVISIONED_BY: PROVISIONER_NAME},
            "labels": {"harness.mailshard.io/node": node},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS_NAME,
            "local": {"path": str(volumes_dir / meta["uid"])},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


class Provisioner:
    """Watches claims and volumes of our StorageClass and acts on each, idempotently."""

    def __init__(self, api: client.ApiClient, volumes_dir: Path | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.api = api
        self.volumes_dir = volumes_dir
        """None on KWOK nodes (paths only); else PV directories are created and removed here."""

    def handle_claim(self, claim: dict[str, Any]) -> None:
        spec = claim.get("spec", {})
        meta = claim["metadata"]
        if spec.get("storageClassName") != STORAGE_CLASS_NAME or meta.get("deletionTimestamp"):
            return
        node = (meta.get("annotations") or {}).get(SELECTED_NODE)
        if claim.get("status", {}).get("phase") == "Pending" and node and not spec.get("volumeName"):
            self._create_volume(claim, node)
        elif claim.get("status", {}).get("phase") == "Bound":
            self._expand_if_grown(claim)

    def handle_volume(self, volume: dict[str, Any]) -> None:
        meta = volume["metadata"]
        if (meta.get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER_NAME:
            return
        if volume.get("status", {}).get("phase") in ("Released", "Failed") and not meta.get("deletionTimestamp"):
            try:
                self.core.delete_persistent_volume(meta["name"])
                log.info("deleted released volume %s", meta["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self._remove_directory(volume)

    def _remove_directory(self, volume: dict[str, Any]) -> None:
        if self.volumes_dir is None:
            return
        path = Path((volume.get("spec", {}).get("local") or {}).get("path", ""))
        # Only ever a directory this provisioner made: directly under its volumes dir.
        if path.parent == self.volumes_dir and path.name:
            shutil.rmtree(path, ignore_errors=True)

    def _create_volume(self, claim: dict[str, Any], node: str) -> None:
        if self.volumes_dir is None:
            volume = pv_for_claim(claim, node)
        else:
            volume = pv_for_claim(claim, node, self.volumes_dir)
            # World-writable like a local-path provisioner's: pods run as any user.
            directory = Path(volume["spec"]["local"]["path"])
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
        try:
            self.core.create_persistent_volume(volume)
            log.info(
                "provisioned %s for %s/%s on %s",
                volume["metadata"]["name"],
                claim["metadata"]["namespace"],
                claim["metadata"]["name"],
                node,
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _expand_if_grown(self, claim: dict[str, Any]) -> None:
        requested = claim["spec"]["resources"]["requests"]["storage"]
        current = (claim.get("status", {}).get("capacity") or {}).get("storage")
        volume_name = claim["spec"].get("volumeName")
        if not volume_name or current is None or _quantity_bytes(requested) <= _quantity_bytes(current):
            return
        self.core.patch_persistent_volume(volume_name, {"spec": {"capacity": {"storage": requested}}})
        self.core.patch_namespaced_persistent_volume_claim_status(
            claim["metadata"]["name"],
            claim["metadata"]["namespace"],
            {"status": {"capacity": {"storage": requested}}},
        )
        log.info("expanded %s to %s", volume_name, requested)

    def run_forever(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(target=self._watch_loop, args=(kind, stop), daemon=True, name=kind)
            for kind in ("claims", "volumes")
        ]
        for thread in threads:
            thread.start()
        while not stop.wait(1.0):
            if not all(t.is_alive() for t in threads):
                raise RuntimeError("a provisioner watch thread died")

    def _watch_loop(self, kind: str, stop: threading.Event) -> None:
        handler: Callable[[dict[str, Any]], None]
        if kind == "claims":
            lister: Any = self.core.list_persistent_volume_claim_for_all_namespaces
            handler = self.handle_claim
        else:
            lister = self.core.list_persistent_volume
            handler = self.handle_volume
        while not stop.is_set():
            try:
                # List (resync, level-based), then watch from that version.
                listing = self.api.sanitize_for_serialization(lister())
                for item in listing["items"]:
                    handler(item)
                version = listing["metadata"]["resourceVersion"]
                for event in watch.Watch().stream(lister, resource_version=version, timeout_seconds=60):
                    if stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        handler(self.api.sanitize_for_serialization(event["object"]))
            except Exception:
                log.exception("%s watch failed; relisting in 1 s", kind)
                time.sleep(1)


_SUFFIXES = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
}


def _quantity_bytes(quantity: str) -> float:
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(quantity)


def main(kubeconfig: str, volumes_dir: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=kubeconfig)
    stop = threading.Event()
    log.info("provisioning StorageClass %s (%s)", STORAGE_CLASS_NAME, PROVISIONER_NAME)
    Provisioner(api, Path(volumes_dir).resolve() if volumes_dir else None).run_forever(stop)
    return 0
