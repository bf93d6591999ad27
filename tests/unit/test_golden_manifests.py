"""Golden tests: a MailShard (and its MailCluster) in, every manifest of the shard out, compared to a file.

Run with UPDATE_GOLDEN=1 to rewrite the expected files after an intended
change, then review the diff like any other code change.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from unit_support import GOLDEN, IMAGES, dump_documents, load_documents, parse_resource

from mailshard.api import MailCluster, MailShard
from mailshard.builders import ShardCredentials, build_replication_secret, build_shard_manifests

pytestmark = pytest.mark.unit

CREDENTIALS = ShardCredentials(replication_password="golden-replication-password", agent_token="golden-agent-token")

CASES = {
    "dovecot": "inbox-1-a",
    "cyrus": "archive-7-b",
}
"""Golden case name -> the member that is master."""


def render_case(input_path: Path, master: str) -> str:
    resources = [parse_resource(document) for document in load_documents(input_path)]
    shards = [r for r in resources if isinstance(r, MailShard)]
    clusters = {r.metadata.name: r for r in resources if isinstance(r, MailCluster)}
    assert len(shards) == 1, f"{input_path} must hold exactly one MailShard"
    shard = shards[0]
    cluster = clusters.get(shard.spec.cluster_ref.name) if shard.spec.cluster_ref else None
    resolved = shard.resolve(cluster.spec.shard_defaults if cluster else None)
    manifests = build_shard_manifests(resolved, master=master, images=IMAGES)
    secret = build_replication_secret(resolved, CREDENTIALS)
    return dump_documents([*manifests.in_apply_order(), secret])


@pytest.mark.parametrize(("case", "master"), sorted(CASES.items()))
def test_manifests_match_golden_file(case: str, master: str) -> None:
    expected_path = GOLDEN / f"{case}.expected.yaml"
    actual = render_case(GOLDEN / f"{case}.input.yaml", master)
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(actual)
    assert expected_path.is_file(), f"{expected_path} is missing; run with UPDATE_GOLDEN=1 to create it"
    expected = expected_path.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=str(expected_path),
                tofile="built now",
            )
        )
        pytest.fail(f"manifests differ from {expected_path.name} (UPDATE_GOLDEN=1 to accept):\n{diff}")


def test_every_golden_input_has_a_case() -> None:
    inputs = {path.name.removesuffix(".input.yaml") for path in GOLDEN.glob("*.input.yaml")}
    assert inputs == set(CASES)
