"""The init-budget estimate: arithmetic, vCPU scaling, the memory that fits, advice, the stack's
MemorySize. Measured parts are injected; expected values are worked out by hand in comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onnxkit_tools import initbudget
from onnxkit_tools.initbudget import (
    Estimate,
    Measurements,
    StackConfigError,
    advice,
    cpu_scale,
    estimate_init,
    format_estimate,
    format_warnings,
    memory_to_fit,
    parse_parameter_overrides,
    size_notes,
    stack_memory,
)
from tests.unit.conftest import BuiltModel
from tests.unit.template_helpers import TEMPLATE_PATH, source

SMALL = Measurements(imports_s=0.2, session_s=1.0, warmup_s=0.3, hash_mb_per_s=500.0)


def test_at_one_vcpu_the_phases_are_the_measurements_and_the_download() -> None:
    # 150 MB at 75 MB/s = 2.0 s; 150 MB at 500 MB/s sha256 = 0.3 s; 1,769 MB = 1 vCPU: x1
    estimate = estimate_init(SMALL, 150_000_000, 1769, s3_mbps=75)

    assert estimate.phases == pytest.approx(
        {"imports": 0.2, "download": 2.0, "verify": 0.3, "session": 1.0, "warm-up": 0.3}
    )
    assert list(estimate.phases) == ["imports", "download", "verify", "session", "warm-up"]
    assert estimate.total_s == pytest.approx(3.8)
    assert estimate.budget_s == pytest.approx(8.0)
    assert estimate.fits
    assert not estimate.over_limit


def test_below_one_vcpu_cpu_phases_stretch_by_the_share_and_the_download_does_not() -> None:
    # 1,024 MB = 1024/1769 = 0.5789 vCPU: CPU work takes 1769/1024 = 1.72754x as long
    estimate = estimate_init(SMALL, 150_000_000, 1024, s3_mbps=75)

    assert estimate.vcpus == pytest.approx(0.578858)
    assert estimate.phases == pytest.approx(
        {
            "imports": 0.2 * 1.727539,
            "download": 2.0,
            "verify": 0.3 * 1.727539,
            "session": 1.0 * 1.727539,
            "warm-up": 0.3 * 1.727539,
        },
        rel=1e-5,
    )


@pytest.mark.parametrize(
    ("memory_mb", "cpu_factor", "expected"),
    [
        (1769, 1.0, 1.0),  # one vCPU: a whole core
        (3538, 1.0, 1.0),  # two vCPU: a single thread runs no faster
        (10240, 1.0, 1.0),
        (128, 1.0, 1769 / 128),  # 13.82: an eighth of a core and a bit less
        (1769, 1.5, 1.5),  # a Lambda core 1.5x slower than one here
        (884, 2.0, 2.0 * 1769 / 884),  # both: 4.0023
    ],
)
def test_cpu_scale(memory_mb: int, cpu_factor: float, expected: float) -> None:
    assert cpu_scale(memory_mb, cpu_factor) == pytest.approx(expected)


@pytest.mark.parametrize("memory_mb", [127, 10241])
def test_a_memory_size_lambda_does_not_offer_is_refused(memory_mb: int) -> None:
    with pytest.raises(ValueError, match="outside Lambda's 128-10240 MB"):
        estimate_init(SMALL, 1, memory_mb)


def test_the_memory_that_fits_is_the_smallest_one() -> None:
    # CPU work at one vCPU: 0.3 + 1.2 + 0.5 + 75 MB / 1000 MB/s = 2.075 s; download 1.0 s.
    # At 512 MB: 2.075 * 1769/512 + 1.0 = 8.169 s > 8 s. Room for CPU: 8 - 1 = 7 s, so it
    # needs 2.075 / 7 = 0.29643 vCPU = 524.38 MB -> 525 MB (7.992 s); 524 MB gives 8.005 s.
    measured = Measurements(imports_s=0.3, session_s=1.2, warmup_s=0.5, hash_mb_per_s=1000.0)
    at_512 = estimate_init(measured, 75_000_000, 512, s3_mbps=75)

    assert at_512.total_s == pytest.approx(8.169, abs=1e-3)
    assert not at_512.fits
    assert not at_512.over_limit  # in the margin: warned, though under 10 s
    assert memory_to_fit(at_512) == 525
    assert estimate_init(measured, 75_000_000, 525, s3_mbps=75).total_s == pytest.approx(
        7.992, abs=1e-3
    )
    assert estimate_init(measured, 75_000_000, 524, s3_mbps=75).total_s == pytest.approx(
        8.005, abs=1e-3
    )
    assert any("MemorySize=525" in line for line in advice(at_512))


def test_no_memory_fits_when_the_download_alone_fills_the_budget() -> None:
    # 1.2 GB at 75 MB/s = 16 s: over 8 s whatever the CPU
    estimate = estimate_init(SMALL, 1_200_000_000, 10240, s3_mbps=75)

    assert estimate.phases["download"] == pytest.approx(16.0)
    assert estimate.over_limit
    assert memory_to_fit(estimate) is None
    assert "the download alone takes 16.0 s at 75 MB/s" in advice(estimate)[0]


def test_no_memory_fits_when_the_cpu_work_needs_more_than_one_core() -> None:
    # CPU 0.5 + 4 + 1 + 0.3 = 5.8 s, download 4 s: 9.8 s at 1,769 MB, needs 5.8/4 = 1.45 vCPU
    measured = Measurements(imports_s=0.5, session_s=4.0, warmup_s=1.0, hash_mb_per_s=1000.0)
    estimate = estimate_init(measured, 300_000_000, 1769, s3_mbps=75)

    assert estimate.total_s == pytest.approx(9.8)
    assert memory_to_fit(estimate) is None
    assert "past 1,769 MB (one vCPU) a thread runs no faster" in advice(estimate)[0]


def test_a_model_that_fits_needs_no_advice_and_no_warning() -> None:
    estimate = estimate_init(SMALL, 150_000_000, 1769)

    assert advice(estimate) == []
    assert format_warnings(estimate) == []


def test_the_advice_names_every_way_out_with_its_parameter() -> None:
    # 0.2 imports + 16 download + 2.4 sha256 (1.2 GB at 500 MB/s) + 1.0 + 0.3 = 19.9 s
    estimate = estimate_init(SMALL, 1_200_000_000, 1769)
    text = "\n".join(format_warnings(estimate))

    assert text.startswith("warning: estimated init 19.9 s at 1769 MB is over the 10 s")
    assert "retries it inside the first invoke" in text
    for phrase in (
        "`SnapStart=Enabled`",
        "`ProvisionedConcurrency=N`",
        "`onnxkit publish ... --backend sagemaker`",
        "`ModelBackend=sagemaker` (ONNXKIT_BACKEND)",
    ):
        assert phrase in text


def test_in_the_margin_the_warning_says_so() -> None:
    # 9.0 s: under the 10 s limit, over 80% of it
    measured = Measurements(imports_s=0.0, session_s=9.0, warmup_s=0.0, hash_mb_per_s=1e9)
    estimate = estimate_init(measured, 0, 1769)

    assert format_warnings(estimate)[0].startswith(
        "warning: estimated init 9.0 s at 1769 MB is within 20% of the 10 s"
    )


def test_the_report_shows_each_phase_and_the_verdict() -> None:
    estimate = estimate_init(SMALL, 150_000_000, 1769, s3_mbps=75)

    lines = format_estimate(estimate, label="digits@prod", memory_source="--memory-mb")

    assert (
        lines[0] == "init estimate for digits@prod (150.0 MB) at MemorySize 1769 MB (--memory-mb):"
    )
    assert lines[2].split()[:3] == ["download", "2.000", "s"]
    assert lines[6].split()[:3] == ["total", "3.800", "s"]
    assert "1.00 vCPU at 1769 MB" in lines[7]
    assert lines[-1] == "within budget: 3.80 s against 8.0 s"


def test_size_notes_name_the_auto_backend_and_tmp_limits() -> None:
    assert size_notes(23_700_000) == []
    # 300 MB: over the auto backend's 250 MB, inside 512 MiB of /tmp
    (auto,) = size_notes(300_000_000)
    assert "ONNXKIT_AUTO_MAX_LAMBDA_BYTES (250.0 MB)" in auto
    # 600 MB: both
    assert "512 MB /tmp" in size_notes(600_000_000)[1]


def test_local_measurements_are_positive_and_the_imports_fall_back_to_the_constant(
    tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxkit.manifest import TensorSpec

    monkeypatch.setattr(initbudget, "measure_imports", lambda: None)

    measured = initbudget.measure_locally(
        tiny_model.path, [TensorSpec("x", "FP32", (-1, 4))], repeats=2
    )

    assert measured.imports_s == 0.2
    assert not measured.imports_measured
    assert measured.session_s > 0
    assert measured.warmup_s > 0
    assert measured.hash_mb_per_s > 0


def test_the_imports_are_timed_in_a_fresh_interpreter() -> None:
    seconds = initbudget.measure_imports()

    assert seconds is not None
    assert 0 < seconds < 60


def test_the_estimate_is_a_frozen_record() -> None:
    estimate = estimate_init(SMALL, 1, 1769)

    assert isinstance(estimate, Estimate)
    with pytest.raises(AttributeError):
        estimate.memory_mb = 3008  # type: ignore[misc]


# --- the stack's MemorySize -----------------------------------------------------------------

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  MemorySize:
    Type: Number
    Default: 1024
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      MemorySize: !Ref MemorySize
      Environment:
        Variables:
          STORE: !Sub
            - s3://${Bucket}/x
            - Bucket: !GetAtt [Bucket, Arn]
"""


def write_stack(folder: Path, samconfig: str | None = None) -> Path:
    template = folder / "template.yaml"
    template.write_text(TEMPLATE)
    if samconfig is not None:
        (folder / "samconfig.toml").write_text(samconfig)
    return template


def test_the_template_default_with_cloudformation_tags(tmp_path: Path) -> None:
    memory = stack_memory(write_stack(tmp_path))

    assert memory.memory_mb == 1024
    assert memory.source.endswith("template.yaml default")


def test_the_projects_own_template_default(tmp_path: Path) -> None:
    # The template alone (no samconfig beside it), read by SAM's own YAML parser for reference.
    shutil.copy(TEMPLATE_PATH, tmp_path / "template.yaml")

    expected = int(source()["Parameters"]["MemorySize"]["Default"])

    assert stack_memory(tmp_path / "template.yaml").memory_mb == expected


@pytest.mark.parametrize(
    ("samconfig", "expected", "section"),
    [
        (
            '[default.deploy.parameters]\nparameter_overrides = "ModelName=x MemorySize=3008"\n',
            3008,
            "[default.deploy.parameters]",
        ),
        (
            '[default.deploy.parameters]\nparameter_overrides = ["MemorySize=2500"]\n',
            2500,
            "[default.deploy.parameters]",
        ),
        (
            '[default.global.parameters]\nparameter_overrides = "MemorySize=4096"\n'
            '[default.deploy.parameters]\nparameter_overrides = "MemorySize=\\"5120\\""\n',
            5120,
            "[default.deploy.parameters]",
        ),
        (
            '[default.global.parameters]\nparameter_overrides = "MemorySize=4096"\n',
            4096,
            "[default.global.parameters]",
        ),
        ('[prod.deploy.parameters]\nparameter_overrides = "MemorySize=8192"\n', 1024, None),
        ('[default.deploy.parameters]\nstack_name = "x"\n', 1024, None),
    ],
)
def test_samconfig_overrides_the_default(
    tmp_path: Path, samconfig: str, expected: int, section: str | None
) -> None:
    memory = stack_memory(write_stack(tmp_path, samconfig))

    assert memory.memory_mb == expected
    assert (section in memory.source) if section else memory.source.endswith("default")


def test_another_config_env_is_read_when_asked(tmp_path: Path) -> None:
    template = write_stack(
        tmp_path, '[prod.deploy.parameters]\nparameter_overrides = "MemorySize=8192"\n'
    )

    assert stack_memory(template, config_env="prod").memory_mb == 8192


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("A=1 MemorySize=3008", {"A": "1", "MemorySize": "3008"}),
        ("Name='two words' B=\"x\"", {"Name": "two words", "B": "x"}),
        (["A=1", "B='2'"], {"A": "1", "B": "2"}),
        (
            "ParameterKey=MemorySize,ParameterValue=4096 ParameterKey=A,ParameterValue=b",
            {"MemorySize": "4096", "A": "b"},
        ),
        ("", {}),
    ],
)
def test_parameter_overrides(value: str | list[str], expected: dict[str, str]) -> None:
    assert parse_parameter_overrides(value) == expected


@pytest.mark.parametrize(
    ("samconfig", "message"),
    [
        ('[default.deploy.parameters]\nparameter_overrides = "MemorySize=64"\n', "'64'"),
        ('[default.deploy.parameters]\nparameter_overrides = "MemorySize=big"\n', "'big'"),
        ("[default.deploy.parameters\n", "cannot read"),
    ],
)
def test_a_bad_samconfig_says_where(tmp_path: Path, samconfig: str, message: str) -> None:
    with pytest.raises(StackConfigError, match=message) as raised:
        stack_memory(write_stack(tmp_path, samconfig))

    assert "samconfig.toml" in str(raised.value)


def test_a_missing_template_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(StackConfigError, match="pass --memory-mb"):
        stack_memory(tmp_path / "template.yaml")


def test_a_template_without_memory_size_says_so(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text("Parameters: {}\n")

    with pytest.raises(StackConfigError, match=r"no Parameters\.MemorySize\.Default"):
        stack_memory(tmp_path / "template.yaml")


def test_the_advised_template_values_are_ones_the_template_accepts() -> None:
    # The advice names template parameters: each must exist, and SnapStart's value be allowed.
    import re

    from tests.unit.template_helpers import source

    estimate = estimate_init(SMALL, 1_200_000_000, 1769)
    text = "\n".join(format_warnings(estimate))
    declared = source()["Parameters"]
    for name, value in re.findall(r"`(\w+)=(\w+)`", text):
        assert name in declared, name
        allowed = declared[name].get("AllowedValues")
        if allowed and value != "N":
            assert value in allowed, (name, value, allowed)
