"""When the agent calls a mail volume full, and what a full volume does to the replication state it reports."""

from __future__ import annotations

import pytest

from mailshard.agent.decide import ReplicationState, replication_state
from mailshard.agent.volume import GIB, Reserve, VolumeReading, shortage
from mailshard.backends import ServingMode

pytestmark = pytest.mark.unit

MIB = 1024**2


def volume(total: int, free: int, *, inodes: int = 0, free_inodes: int = 0) -> VolumeReading:
    return VolumeReading(total_bytes=total, free_bytes=free, total_inodes=inodes, free_inodes=free_inodes)


@pytest.mark.parametrize(
    ("total", "reserve"),
    [
        (2 * MIB, 20_971),  # 1 % of a tiny volume
        (10 * GIB, 107_374_182),  # 1 % of 10 GiB
        (100 * GIB, GIB),  # capped at 1 GiB
        (50 * 1024 * GIB, GIB),
    ],
)
def test_the_default_reserve_is_one_percent_at_most_one_gib(total: int, reserve: int) -> None:
    assert Reserve().bytes_for(volume(total, total)) == reserve


def test_a_given_reserve_wins_over_the_default() -> None:
    assert Reserve(256 * 1024).bytes_for(volume(100 * GIB, GIB)) == 256 * 1024


def test_a_volume_at_its_reserve_takes_nothing_more() -> None:
    reserve = Reserve(MIB)
    assert shortage(volume(10 * MIB, MIB), reserve) is None  # exactly at the reserve: still room for nothing
    assert shortage(volume(10 * MIB, MIB), reserve, incoming_bytes=1) is not None
    problem = shortage(volume(10 * MIB, MIB - 1), reserve)
    assert problem == f"{MIB - 1} bytes free of {10 * MIB}, below the reserve of {MIB}"


def test_a_message_that_would_cross_the_reserve_is_refused_though_the_volume_is_not_full() -> None:
    reserve = Reserve(MIB)
    reading = volume(10 * MIB, 2 * MIB)
    assert shortage(reading, reserve) is None
    assert shortage(reading, reserve, incoming_bytes=MIB) is None
    problem = shortage(reading, reserve, incoming_bytes=MIB + 1)
    assert problem is not None
    assert f"and {MIB + 1} bytes are waiting" in problem


def test_running_out_of_inodes_is_full_too() -> None:
    reading = volume(100 * GIB, 50 * GIB, inodes=1_000_000, free_inodes=10_000)  # the reserve is 10,000 inodes
    assert shortage(reading, Reserve()) is None
    assert shortage(reading, Reserve(), incoming_files=1) == "10000 inodes free of 1000000, below the reserve of 10000"
    small = volume(100 * GIB, 50 * GIB, inodes=5_000, free_inodes=49)  # 1 % of 5,000 is 50
    assert shortage(small, Reserve()) == "49 inodes free of 5000, below the reserve of 50"


def test_a_filesystem_without_an_inode_limit_is_never_full_of_inodes() -> None:
    assert shortage(volume(100 * GIB, 50 * GIB, inodes=0, free_inodes=0), Reserve(), incoming_files=10) is None


@pytest.mark.parametrize("mode", [ServingMode.MASTER, ServingMode.REPLICA])
def test_a_member_whose_volume_is_full_never_reports_in_sync(mode: ServingMode) -> None:
    def state(*, volume_full: bool) -> ReplicationState:
        return replication_state(
            mode=mode, have_peer_state=True, in_sync=True, peer_problem=None, failed_users=0, volume_full=volume_full
        )

    assert state(volume_full=False) is ReplicationState.IN_SYNC
    assert state(volume_full=True) is ReplicationState.FAILING


def test_a_fenced_member_with_a_full_volume_replicates_nothing_either_way() -> None:
    state = replication_state(
        mode=ServingMode.FENCED,
        have_peer_state=False,
        in_sync=False,
        peer_problem=None,
        failed_users=1,
        volume_full=True,
    )
    assert state is ReplicationState.OFF
