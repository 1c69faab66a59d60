"""``onnxkit check`` and the check ``onnxkit publish`` runs first: exit codes, output, defaults.

The local measurements are injected (hand-picked values) except where a test says it measures;
expected figures are worked out in comments.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from onnxkit_tools.cli import cli, main
from onnxkit_tools.cli.check import EXIT_OVER_INIT_BUDGET
from onnxkit_tools.initbudget import Measurements
from tests.unit.conftest import BuiltModel

# The package re-exports the command under the module's name: fetch the module itself.
check_module = importlib.import_module("onnxkit_tools.cli.check")
FAST = Measurements(imports_s=0.25, session_s=0.5, warmup_s=0.25, hash_mb_per_s=1000.0)
SLOW = Measurements(imports_s=0.25, session_s=12.0, warmup_s=0.25, hash_mb_per_s=1000.0)


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Measurements]:
    """Replace the local measurements by ``measured["now"]`` (FAST unless a test sets it)."""
    box = {"now": FAST}

    def fake(model_path: Path, inputs: Any, *, repeats: int) -> Measurements:
        assert model_path.is_file()
        return box["now"]

    monkeypatch.setattr(check_module, "measure_locally", fake)
    return box


def test_check_explains_itself_with_exit_codes() -> None:
    text = " ".join(CliRunner().invoke(cli, ["check", "--help"]).output.split())

    for phrase in ("--memory-mb", "--s3-mbps", "--cpu-factor", "--json", "1,769 MB", "4 when"):
        assert phrase in text


def test_a_model_within_budget_exits_0_with_the_breakdown(
    tiny_model: BuiltModel, measured: dict[str, Measurements], capsys: pytest.CaptureFixture[str]
) -> None:
    # 1,769 MB = 1 vCPU: 0.25 + 0.5 + 0.25 s, plus a few hundred bytes to download and hash
    code = main(["check", str(tiny_model.path), "--memory-mb", "1769"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"init estimate for {tiny_model.path} (")
    assert lines[0].endswith("at MemorySize 1769 MB (--memory-mb):")
    assert [line.split()[0] for line in lines[1:7]] == [
        "imports",
        "download",
        "verify",
        "session",
        "warm-up",
        "total",
    ]
    assert lines[4].split()[1] == "0.500"
    assert lines[6].split()[1] == "1.000"
    assert lines[-1] == "within budget: 1.00 s against 8.0 s"


def test_over_budget_exits_4_and_warns_on_stderr_with_the_memory_that_fits(
    tiny_model: BuiltModel, measured: dict[str, Measurements], capsys: pytest.CaptureFixture[str]
) -> None:
    # 1,024 MB: 12.5 s of CPU x 1769/1024 = 21.6 s. More memory: 12.5 s on one core > 8 s
    measured["now"] = SLOW

    code = main(["check", str(tiny_model.path), "--memory-mb", "1024"])

    out, err = capsys.readouterr()
    assert code == EXIT_OVER_INIT_BUDGET == 4
    assert "OVER BUDGET: 21.59 s against 8.0 s" in out
    assert err.startswith("warning: estimated init 21.6 s at 1024 MB is over the 10 s")
    assert "more memory does not bring it within 8 s" in err
    assert "SnapStart=Enabled" in err
    assert "ProvisionedConcurrency=N" in err


def test_json_carries_the_phases_and_the_recommendation(
    tiny_model: BuiltModel, measured: dict[str, Measurements], capsys: pytest.CaptureFixture[str]
) -> None:
    # 512 MB: 1.0 s of CPU x 1769/512 = 3.455 s; fits, so nothing to recommend
    code = main(["check", str(tiny_model.path), "--memory-mb", "512", "--json"])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["memory_mb"] == 512
    assert document["memory_source"] == "--memory-mb"
    assert document["phases_s"]["session"] == pytest.approx(0.5 * 1769 / 512, abs=1e-4)
    assert document["total_bytes"] == tiny_model.path.stat().st_size
    assert document["fits"] is True
    assert document["advice"] == []


def test_s3_throughput_and_cpu_factor_are_applied(
    tiny_model: BuiltModel, measured: dict[str, Measurements], capsys: pytest.CaptureFixture[str]
) -> None:
    size = tiny_model.path.stat().st_size
    main(
        [
            *["check", str(tiny_model.path), "--memory-mb", "1769", "--s3-mbps", "0.001"],
            *["--cpu-factor", "2", "--json"],
        ]
    )

    document = json.loads(capsys.readouterr().out)
    assert document["phases_s"]["download"] == pytest.approx(size / 1000, abs=1e-4)  # 1 kB/s
    assert document["phases_s"]["imports"] == pytest.approx(0.5)


def test_memory_defaults_to_samconfig_over_the_template(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "template.yaml").write_text(
        "Parameters:\n  MemorySize:\n    Type: Number\n    Default: 1024\n"
        "Resources:\n  Fn:\n    Properties:\n      MemorySize: !Ref MemorySize\n"
    )
    monkeypatch.chdir(project)

    main(["check", str(tiny_model.path), "--json"])
    from_template = json.loads(capsys.readouterr().out)
    (project / "samconfig.toml").write_text(
        '[default.deploy.parameters]\nparameter_overrides = "MemorySize=3008"\n'
    )
    main(["check", str(tiny_model.path), "--json"])
    from_samconfig = json.loads(capsys.readouterr().out)

    assert from_template["memory_mb"] == 1024
    assert from_template["memory_source"] == "template.yaml default"
    assert from_samconfig["memory_mb"] == 3008
    assert "samconfig.toml [default.deploy.parameters]" in from_samconfig["memory_source"]


def test_without_a_template_or_memory_it_is_a_usage_error(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)

    code = main(["check", str(tiny_model.path)])

    assert code == 2
    assert "pass --memory-mb" in capsys.readouterr().err


def test_a_missing_path_is_a_usage_error_not_a_store_lookup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["check", "build/none/model.onnx", "--memory-mb", "1769"])

    assert code == 2
    assert "build/none/model.onnx does not exist" in capsys.readouterr().err


def test_a_folder_and_a_store_ref_are_checked_like_the_file(
    tiny_external_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the model with external data, published to a file store as tiny@prod
    store = f"file://{tmp_path / 'store'}"
    folder = tiny_external_model.folder
    expected = sum(p.stat().st_size for p in (folder / "model.onnx", folder / "model.onnx.data"))
    publish = ["publish", str(tiny_external_model.path), "--name", "tiny", "--alias", "prod"]
    assert main([*publish, "--store", store, "--memory-mb", "1769"]) == 0
    capsys.readouterr()

    # WHEN the folder and the ref are checked
    assert main(["check", str(folder), "--memory-mb", "1769", "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["check", "tiny@prod", "--store", store, "--memory-mb", "1769", "--json"]) == 0
    from_store = json.loads(capsys.readouterr().out)

    # THEN both count the graph and its external data
    assert from_folder["total_bytes"] == expected
    assert from_store["total_bytes"] == expected


def test_publish_prints_the_estimate_and_over_budget_only_warns(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = f"file://{tmp_path / 'store'}"
    publish = ["publish", str(tiny_model.path), "--name", "tiny", "--store", store]

    assert main([*publish, "--memory-mb", "1769"]) == 0
    fits = capsys.readouterr()
    measured["now"] = SLOW
    assert main([*publish, "--memory-mb", "1769"]) == 0
    over = capsys.readouterr()

    assert "init estimate for" in fits.out
    assert "within budget: 1.00 s against 8.0 s" in fits.out
    assert "published tiny version 1" in fits.out
    assert fits.err.count("warning") == 0
    assert "OVER BUDGET" in over.out
    assert "warning: estimated init 12.5 s at 1769 MB is over the 10 s" in over.err
    assert "published tiny version 2" in over.out


def test_publish_with_strict_init_budget_refuses_before_uploading(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    measured["now"] = SLOW
    root = tmp_path / "store"
    publish = ["publish", str(tiny_model.path), "--name", "tiny", "--store", f"file://{root}"]

    code = main([*publish, "--memory-mb", "1769", "--strict-init-budget"])

    assert code == EXIT_OVER_INIT_BUDGET
    assert "not published: the init estimate 12.5 s is over 8.0 s" in capsys.readouterr().err
    assert not (root / "models").exists()


def test_publish_for_sagemaker_checks_nothing(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    measured["now"] = SLOW
    publish = ["publish", str(tiny_model.path), "--name", "tiny", "--backend", "sagemaker"]

    code = main([*publish, "--store", f"file://{tmp_path}", "--strict-init-budget"])

    assert code == 0
    assert "init estimate" not in capsys.readouterr().out


def test_publish_away_from_the_project_says_how_to_check(
    tiny_model: BuiltModel,
    measured: dict[str, Measurements],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)

    code = main(
        ["publish", str(tiny_model.path), "--name", "tiny", "--store", f"file://{tmp_path}"]
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert "note: init budget not checked: no template.yaml here" in err
    assert "published tiny version 1" in out


def test_publish_through_click_prints_the_estimate_measured_for_real(
    tiny_model: BuiltModel, tmp_path: Path
) -> None:
    # No injected numbers: the tiny model's real measurements, one session.
    result = CliRunner().invoke(
        cli,
        [
            *["publish", str(tiny_model.path), "--name", "tiny"],
            *["--store", f"file://{tmp_path}", "--memory-mb", "1769"],
        ],
    )

    assert result.exit_code == 0, result.output
    assert "init estimate for" in result.stdout
    assert "within budget" in result.stdout
    assert "published tiny version 1" in result.stdout
