"""The chart's generated templates (CRDs, RBAC rules) cannot drift from the models and rbac.py unnoticed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from chart_support import CHART, CRDS

from mailshard import rbac
from mailshard.__main__ import main
from mailshard.api.crd import render_crd_files
from mailshard.chartgen import check_chart, crd_template, default_chart, render_chart_files, write_chart

pytestmark = pytest.mark.unit


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "charts" / "mailshard-operator"
    shutil.copytree(CHART, copy)
    return copy


def test_the_repository_chart_is_in_sync(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_chart(CHART) == []
    assert default_chart(CRDS) == CHART
    assert main(["crds", "--check", str(CRDS)]) == 0
    assert "chart's generated templates match" in capsys.readouterr().out


def test_generated_files_are_the_crds_and_the_rules() -> None:
    assert set(render_chart_files()) == {
        "templates/crds/mailshard.io_mailshards.yaml",
        "templates/crds/mailshard.io_mailclusters.yaml",
        "templates/_rbac-rules.tpl",
    }


def test_an_edited_crd_template_fails_the_check(chart_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = chart_copy / "templates" / "crds" / "mailshard.io_mailshards.yaml"
    template.write_text(template.read_text().replace("type: integer", "type: string", 1))
    drifts = check_chart(chart_copy)
    assert [(d.path, d.problem) for d in drifts] == [(template, "differs from the models")]
    assert main(["crds", "--check", str(CRDS), "--chart", str(chart_copy)]) == 1
    error = capsys.readouterr().err
    assert f"{template}: differs from the models" in error
    assert "+                    type: integer" in error
    assert "python -m mailshard crds --write crds/" in error


def test_a_changed_model_fails_the_check_of_the_chart_too(monkeypatch: pytest.MonkeyPatch) -> None:
    changed = {name: text.replace("minimum: 1", "minimum: 2") for name, text in render_crd_files().items()}
    monkeypatch.setattr("mailshard.chartgen.render_crd_files", lambda: changed)
    assert {d.path.name for d in check_chart(CHART)} == set(changed)


def test_a_changed_rbac_rule_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("", ("secrets",), ("list",), "a rule someone added to rbac.py")
    monkeypatch.setattr(rbac, "NAMESPACED_RULES", (*rbac.NAMESPACED_RULES, extra))
    (drift,) = check_chart(CHART)
    assert drift.path == CHART / "templates" / "_rbac-rules.tpl"
    assert '+  verbs: ["list"]' in drift.diff


def test_a_stale_and_a_missing_crd_template_fail_the_check(chart_copy: Path) -> None:
    crds = chart_copy / "templates" / "crds"
    (crds / "mailshard.io_mailshards.yaml").rename(crds / "mailshard.io_oldshards.yaml")
    problems = {(d.path.name, d.problem.split(" ")[0]) for d in check_chart(chart_copy)}
    assert problems == {("mailshard.io_mailshards.yaml", "missing"), ("mailshard.io_oldshards.yaml", "is")}


def test_write_restores_the_generated_files(chart_copy: Path) -> None:
    shutil.rmtree(chart_copy / "templates" / "crds")
    (chart_copy / "templates" / "_rbac-rules.tpl").write_text("edited\n")
    written = write_chart(chart_copy)
    assert len(written) == 3
    assert check_chart(chart_copy) == []
    assert (chart_copy / "templates" / "deployment.yaml").read_text() == (
        CHART / "templates" / "deployment.yaml"
    ).read_text()


def test_write_and_check_need_a_chart(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Helm chart"):
        write_chart(tmp_path)
    (drift,) = check_chart(tmp_path)
    assert "no Helm chart" in drift.problem


def test_the_crd_template_wrapper_needs_one_top_level_metadata() -> None:
    with pytest.raises(ValueError, match="metadata"):
        crd_template("kind: CustomResourceDefinition\nspec: {}\n")
