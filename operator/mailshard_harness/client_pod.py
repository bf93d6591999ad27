"""A mail client pod on a cluster whose nodes run containers: the e2e tier's and the demo's way to send and read mail.

Why this module exists: mail must be sent to the proxy Service from inside
the cluster (on kind the host cannot reach Service IPs), by a process that is
not one of the mail pods, so that what is observed is what a client sees. The
pod runs our Dovecot image (it has Debian's python3) with `mail_client.py`
mounted from a ConfigMap, and every command goes through the API server's exec,
as `kubectl exec` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.stream import stream

from mailshard_harness import mail_client
from mailshard_harness.testing import eventually

SCRIPT_DIR = "/opt/mail-client"


def pod_exec(
    core: client.CoreV1Api, namespace: str, pod: str, command: list[str], *, container: str | None = None
) -> tuple[int, str]:
    """Exit code and combined output of `command` in a running pod."""
    kwargs: dict[str, Any] = {"container": container} if container else {}
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=command,
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
        **kwargs,
    )
    output = []
    while ws.is_open():
        ws.update(timeout=1)
        output.append(ws.read_stdout())
        output.append(ws.read_stderr())
    ws.close()
    code = ws.returncode
    return (code if code is not None else -1), "".join(output)


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


class ClientPod:
    """The pod `name` in `namespace`, running `mail_client.py` commands on request."""

    def __init__(self, api: client.ApiClient, namespace: str, image: str, *, name: str = "mail-client") -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.image, self.name = namespace, image, name

    def manifests(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Its ConfigMap (the script) and the Pod."""
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name},
            "data": {"mail_client.py": Path(mail_client.__file__).read_text()},
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/name": self.name}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "client",
                        "image": self.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "infinity"],
                        "volumeMounts": [{"name": "script", "mountPath": SCRIPT_DIR}],
                    }
                ],
                "volumes": [{"name": "script", "configMap": {"name": self.name}}],
            },
        }
        return config_map, pod

    def create(self) -> None:
        config_map, pod = self.manifests()
        self.core.create_namespaced_config_map(self.namespace, config_map)
        self.core.create_namespaced_pod(self.namespace, pod)

    def is_ready(self) -> bool:
        try:
            return _ready(self.core.read_namespaced_pod(self.name, self.namespace))
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def wait_ready(self, timeout: float = 120) -> None:
        eventually(self.is_ready, timeout=timeout, what=f"the client pod {self.name} Ready")

    def shell(self, command: str) -> str:
        code, out = pod_exec(self.core, self.namespace, self.name, ["sh", "-c", command])
        if code != 0:
            raise AssertionError(f"{command!r} in {self.name} exited {code}: {out[-2000:]}")
        return out

    def run(self, *args: str, check: bool = True) -> str:
        """Output of `mail_client.py <args>`."""
        code, out = pod_exec(self.core, self.namespace, self.name, ["python3", f"{SCRIPT_DIR}/mail_client.py", *args])
        if check and code != 0:
            raise AssertionError(f"mail_client {' '.join(args[:3])} … exited {code}: {out[-2000:]}")
        return out

    def run_json(self, *args: str) -> Any:
        """The JSON document a one-shot command (`deliver`, `inventory`) prints last."""
        return json.loads(self.run(*args).strip().splitlines()[-1])

    # --- background jobs: `stream` and `watch` run until asked to stop ----------------------------

    def start(self, job: str, *args: str) -> None:
        """Runs a long command (`stream`, `watch`) in the pod's background as `job`, until `stop(job)`."""
        stop = f"/tmp/{job}.stop"
        argv = " ".join(["python3", f"{SCRIPT_DIR}/mail_client.py", *args, "--stop-file", stop])
        self.shell(f"rm -f {stop}; nohup {argv} > /tmp/{job}.jsonl 2>&1 &")

    def events(self, job: str) -> list[dict[str, Any]]:
        """The JSON lines `job` has written so far."""
        out = self.shell(f"cat /tmp/{job}.jsonl")
        lines = out.split("\n")
        if not out.endswith("\n"):
            lines = lines[:-1]  # the job is writing this line right now
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self, job: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Stops `job` and returns all its lines, the last being its `done` line."""
        self.shell(f"touch /tmp/{job}.stop")

        def finished() -> list[dict[str, Any]] | None:
            events = self.events(job)
            return events if events and events[-1].get("event") == "done" else None

        return eventually(finished, timeout=timeout, what=f"the client's {job} to finish")
