"""Kubernetes Events about our objects, posted by us rather than by kopf's log-to-event bridge.

kopf can turn every log line of a handler into an Event; that would make an
idle resync write Events. Here an Event is posted only when the caller says
something happened (a transition, an outcome), so `kubectl describe` tells the
story and an idle operator writes nothing.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any, Final, Literal

from kubernetes.client.exceptions import ApiException

from mailshard.services.kube import KubeApi

REPORTING_COMPONENT: Final = "mailshard-operator"

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]


class EventRecorder:
    """Posts core/v1 Events; never lets a failed Event fail a reconcile."""

    def __init__(self, api: KubeApi, *, instance: str | None = None) -> None:
        self._api = api
        self._instance = instance or REPORTING_COMPONENT

    def record(self, involved: dict[str, Any], event_type: EventType, reason: str, message: str) -> None:
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        log_level = logging.WARNING if event_type == "Warning" else logging.INFO
        log.log(log_level, "%s/%s %s: %s", namespace, meta["name"], reason, message)
        try:
            self._api.create(event)
        except ApiException as exc:
            log.warning("could not post Event %s for %s/%s: %s", reason, namespace, meta["name"], exc.reason)
