"""The failover package reads no clock: `now` is an input, so any decision can be replayed from its facts.

import-linter keeps `time`, sockets and the Kubernetes client out of the
package; it cannot see `datetime.now()`, which needs no import of its own
beyond `datetime`, so this test looks for such calls in the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailshard.failover

pytestmark = pytest.mark.unit

PACKAGE = Path(mailshard.failover.__file__).parent
CLOCK_READS = frozenset({"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"})


def clock_reads(source: str) -> list[str]:
    """Calls like `datetime.now(...)` or `date.today()` in `source`, as `line: .name()`."""
    return [
        f"{node.lineno}: .{node.func.attr}()"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_READS
    ]


def test_the_check_finds_a_clock_read() -> None:
    assert clock_reads("from datetime import UTC, datetime\nstarted = datetime.now(UTC)\n") == ["2: .now()"]


def test_no_module_of_the_failover_package_reads_the_clock() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 8
    offenders = {path.name: found for path in modules if (found := clock_reads(path.read_text(encoding="utf-8")))}
    assert offenders == {}
