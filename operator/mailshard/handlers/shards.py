"""MailShard handlers: every trigger leads to the same level-based reconcile."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import kopf

from mailshard.api.constants import GROUP, LABEL_MANAGED_BY, LABEL_SHARD, MANAGED_BY
from mailshard.api.v1alpha1 import VERSION
from mailshard.handlers.support import namespaced
from mailshard.services.shard import fence_request_pending

RESYNC_SECONDS = float(os.environ.get("MAILSHARD_RESYNC_SECONDS", "120"))
"""The safety net under the event triggers: every shard is re-checked this often even if nothing fired."""


@kopf.on.resume(GROUP, VERSION, "mailshards")
@kopf.on.create(GROUP, VERSION, "mailshards")
@kopf.on.update(GROUP, VERSION, "mailshards")
def mailshard_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo.platform.shards.reconcile(namespaced(namespace), name)


def _fence_request_pending(body: kopf.Body, **_: Any) -> bool:
    return fence_request_pending(dict(body))


@kopf.on.event(GROUP, VERSION, "mailshards", when=_fence_request_pending)
def fence_requested(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    # `kubectl mailshard fence`/`unfence` fire no update handler (see fence_request_pending).
    if type:
        memo.platform.shards.reconcile(namespaced(namespace), name)


@kopf.timer(GROUP, VERSION, "mailshards", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def mailshard_resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo.platform.shards.reconcile(namespaced(namespace), name)


@kopf.on.delete(GROUP, VERSION, "mailshards")
def mailshard_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.platform.shards.finalize(dict(body))


_OWNED: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_SHARD: kopf.PRESENT}


@kopf.on.event("apps", "v1", "statefulsets", labels=_OWNED)
@kopf.on.event("v1", "services", labels=_OWNED)
@kopf.on.event("v1", "configmaps", labels=_OWNED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=_OWNED)
@kopf.on.event("v1", "pods", labels={LABEL_SHARD: kopf.PRESENT})
def owned_object_changed(type: str, namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    # kopf's initial listing has no event type: the resume handlers already cover every shard then.
    if type:
        memo.platform.shards.reconcile(namespaced(namespace), labels[LABEL_SHARD])
