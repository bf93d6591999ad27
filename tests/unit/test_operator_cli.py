"""`python -m mailshard run`: peering for replicated operators, standalone for one process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import mailshard.runner
from mailshard.__main__ import build_parser, main
from mailshard.runner import peering_priority

pytestmark = pytest.mark.unit


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `main` would start kopf with, instead of starting it."""
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(mailshard.runner, "run_operator", fake)
    return calls


def run(runs: list[dict[str, Any]], *argv: str) -> dict[str, Any]:
    assert main(["run", *argv]) == 0
    return runs[-1]


def test_peering_gives_each_replica_its_own_random_priority(runs: list[dict[str, Any]]) -> None:
    first = run(runs, "--peering", "mailshard-operator")
    second = run(runs, "--peering", "mailshard-operator")
    assert (first["peering"], first["standalone"]) == ("mailshard-operator", False)
    assert first["priority"] != second["priority"]
    assert 0 < first["priority"] < 2**31


def test_an_explicit_priority_and_namespaces(runs: list[dict[str, Any]]) -> None:
    call = run(runs, "--peering", "p", "--priority", "100", "--namespace", "a", "--namespace", "b")
    assert (call["priority"], call["namespaces"]) == (100, ["a", "b"])


def test_standalone_still_works_and_has_no_peering(runs: list[dict[str, Any]]) -> None:
    call = run(runs, "--standalone", "--liveness", "")
    assert (call["standalone"], call["peering"], call["priority"], call["liveness"]) == (True, None, None, "")


def test_neither_flag_keeps_kopfs_own_detection(runs: list[dict[str, Any]]) -> None:
    call = run(runs)
    assert (call["standalone"], call["peering"], call["priority"]) == (False, None, None)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["run", "--standalone", "--peering", "p"], "not allowed with argument"),
        (["run", "--peering", "p", "--priority", "high"], "not an integer nor 'random'"),
    ],
)
def test_contradictions_are_refused(argv: Sequence[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert error in capsys.readouterr().err


def test_peering_priority() -> None:
    assert peering_priority("7") == 7
    assert len({peering_priority("random") for _ in range(50)}) > 45
    with pytest.raises(ValueError, match="invalid literal"):
        peering_priority("seven")
