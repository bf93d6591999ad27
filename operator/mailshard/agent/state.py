"""The member's durable state: its role file and its fencing marker.

Why this module exists: the role must survive restarts of the agent and the
pod, and an agent must never guess it. The role file holds one word,
``master`` or ``replica``; anything else (missing, unreadable, garbage) means
"unknown", which the agent serves as fenced and reports as an error. The fence
marker is a file whose mere presence fences the member; it is read on every
start, so a fence set before a crash still holds after it. Both are written
atomically (write to a temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from mailshard.backends import Role


@dataclass(frozen=True)
class RoleReading:
    role: Role | None
    error: str | None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RoleFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> RoleReading:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return RoleReading(None, f"role file {self.path} does not exist: role unknown, serving as fenced")
        except (OSError, UnicodeDecodeError) as exc:
            return RoleReading(None, f"role file {self.path} is unreadable ({exc}): role unknown, serving as fenced")
        try:
            return RoleReading(Role(text), None)
        except ValueError:
            return RoleReading(
                None,
                f"role file {self.path} says {text[:40]!r}, expected 'master' or 'replica': "
                "role unknown, serving as fenced",
            )

    def write(self, role: Role) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, f"{role.value}\n")


class FenceMarker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self, reason: str) -> None:
        _atomic_write(self.path, reason + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
