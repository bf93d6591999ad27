"""The generated parts of the Helm chart: its CRD templates and its RBAC rules, from the one source each.

The chart `charts/mailshard-operator` is hand-written except for what must not
drift from the code: the CRDs (the exact text of `crds/`, wrapped in the
`crds.enabled` guard and the `crds.keep` annotation) and the RBAC rules
(`mailshard.rbac.CLUSTER_RULES` and `NAMESPACED_RULES`, each with its reason
as a comment; the ClusterRole and the per-namespace Roles include them).
`python -m mailshard crds --write crds/` writes them next to `crds/`, and
`--check crds/` fails CI when the chart on disk differs.

Rendering is pure (`render_chart_files`); `write_chart` and `check_chart` are
the file-system edge, like `mailshard.crdgen` for `crds/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from mailshard import rbac
from mailshard.api.crd import render_crd_files
from mailshard.crdgen import Drift, check_files

DEFAULT_CHART: Final = Path("charts") / "mailshard-operator"
"""Where the chart lives, relative to the repository root (the parent of `crds/`)."""

CRD_TEMPLATES: Final = Path("templates") / "crds"
RULES_TEMPLATE: Final = Path("templates") / "_rbac-rules.tpl"
CLUSTER_RULES_DEFINE: Final = "mailshard-operator.rbacClusterRules"
NAMESPACED_RULES_DEFINE: Final = "mailshard-operator.rbacNamespacedRules"

CRD_GUARD_OPEN: Final = "{{- if .Values.crds.enabled }}\n"
CRD_GUARD_CLOSE: Final = "{{- end }}\n"
KEEP_ANNOTATION: Final = "{{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n{{- end }}\n"
"""Inserted right after the CRD's top-level `metadata:`; `annotations` sorts before `labels`: the body stays sorted."""

_METADATA: Final = "\nmetadata:\n"


def default_chart(crds_directory: Path) -> Path:
    """The chart next to a `crds/` directory: `<crds>/../charts/mailshard-operator`."""
    return crds_directory.parent / DEFAULT_CHART


def crd_template(crd_file: str) -> str:
    """One file of `crds/` as a chart template: the same bytes plus the Helm lines around and inside `metadata`."""
    if crd_file.count(_METADATA) != 1:
        raise ValueError("a generated CRD must have exactly one top-level `metadata:`")
    body = crd_file.replace(_METADATA, _METADATA + KEEP_ANNOTATION)
    return CRD_GUARD_OPEN + body + CRD_GUARD_CLOSE


def rules_template() -> str:
    """The RBAC rules as two named templates, one commented rule per entry of `mailshard.rbac`'s two scopes."""
    lines = [
        "{{/*",
        "Generated from mailshard.rbac by `python -m mailshard crds --write crds/`.",
        "Do not edit: change operator/mailshard/rbac.py and regenerate.",
        "*/}}",
    ]
    for define, rules in ((CLUSTER_RULES_DEFINE, rbac.CLUSTER_RULES), (NAMESPACED_RULES_DEFINE, rbac.NAMESPACED_RULES)):
        lines.append(f'{{{{- define "{define}" -}}}}')
        for group, resources, verbs, why in rules:
            lines += [
                f"# {why}",
                f"- apiGroups: {json.dumps([group])}",
                f"  resources: {json.dumps(list(resources))}",
                f"  verbs: {json.dumps(list(verbs))}",
            ]
        lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


def render_chart_files() -> dict[str, str]:
    """The exact content of every generated chart file, keyed by its path relative to the chart."""
    files = {(CRD_TEMPLATES / name).as_posix(): crd_template(text) for name, text in render_crd_files().items()}
    files[RULES_TEMPLATE.as_posix()] = rules_template()
    return files


def write_chart(chart: Path) -> list[Path]:
    """(Re)write the generated files into the chart; returns the files written."""
    if not (chart / "Chart.yaml").is_file():
        raise FileNotFoundError(f"no Helm chart at {chart} (Chart.yaml missing); pass --chart")
    written = []
    for name, content in render_chart_files().items():
        path = chart / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def check_chart(chart: Path) -> list[Drift]:
    """Every generated chart file that is missing, differs, or is a stale CRD template (empty when in sync)."""
    if not (chart / "Chart.yaml").is_file():
        return [Drift(chart / "Chart.yaml", "missing: no Helm chart there (pass --chart)")]
    return check_files(chart, render_chart_files(), stale=f"{CRD_TEMPLATES.as_posix()}/*.yaml")
