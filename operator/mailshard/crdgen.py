"""Writes the generated CRDs into `crds/`, or checks that the files there are still what the models say.

The generation itself is pure (`mailshard.api.crd`); this module is the thin
file-system edge behind `python -m mailshard crds --write|--check DIR`, used by
developers after changing a model and by CI to catch a model changed without
regenerating.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mailshard.api.crd import render_crd_files
from mailshard.api.reference import render_reference

REGENERATE_HINT = "python -m mailshard crds --write crds/"


@dataclass(frozen=True)
class Drift:
    """One file under the CRD directory that does not match the models."""

    path: Path
    problem: str
    diff: str = ""

    def describe(self) -> str:
        text = f"{self.path}: {self.problem}"
        return f"{text}\n{self.diff}" if self.diff else text


def write_crds(directory: Path) -> list[Path]:
    """(Re)write every generated CRD file into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render_crd_files().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def check_crds(directory: Path) -> list[Drift]:
    """Every difference between `directory` and the CRDs generated from the models (empty when in sync)."""
    return check_files(directory, render_crd_files())


def check_files(directory: Path, expected: Mapping[str, str], *, stale: str = "*.yaml") -> list[Drift]:
    """Every file of `expected` missing from or different in `directory`, and every file matching `stale` not in it."""
    drifts = []
    for name, content in expected.items():
        path = directory / name
        if not path.is_file():
            drifts.append(Drift(path, "missing"))
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != content:
            diff = "".join(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    content.splitlines(keepends=True),
                    fromfile=f"{path} (on disk)",
                    tofile=f"{path} (from the models)",
                )
            )
            drifts.append(Drift(path, "differs from the models", diff))
    if directory.is_dir():
        for path in sorted(directory.glob(stale)):
            if path.relative_to(directory).as_posix() not in expected:
                drifts.append(Drift(path, "is not generated from any model (stale CRD?)"))
    return drifts


def reference_path(crds_directory: Path) -> Path:
    """docs/reference.md beside the CRD directory's repository."""
    return crds_directory.resolve().parent / "docs" / "reference.md"


def write_reference(crds_directory: Path) -> Path:
    path = reference_path(crds_directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_reference(), encoding="utf-8")
    return path


def check_reference(crds_directory: Path) -> list[Drift]:
    path = reference_path(crds_directory)
    return check_files(path.parent, {path.name: render_reference()}, stale="reference.md")
