"""template.yaml through the real tools: sam validate (lint and translate), cfn-lint, checkov.

The tools live in their own venvs (their pins clash with the app's), which `make setup`
creates; ONNXKIT_SAM, ONNXKIT_CFN_LINT and ONNXKIT_CHECKOV point elsewhere. Nothing here
talks to AWS: the subprocesses get fake credentials and an endpoint on a closed loopback
port, so a call that slipped through would fail at once instead of reaching an account.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

pytestmark = [pytest.mark.integration, pytest.mark.tools]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
TOOL_TIMEOUT_S = 120

# Defaults flipped so that the resources behind the other branch of each condition exist:
# checkov evaluates conditions from the defaults and skips resources whose condition is false.
OTHER_BRANCHES = {
    "AuthType": "IAM",
    "DeployZipVariant": "true",
    "ModelBucketName": "existing-model-bucket",
    "ReservedConcurrency": "0",
    "ConfigureApiGatewayAccount": "false",
    # The GPU path on, serving a model.tar.gz (network isolation on), and the function sending
    # its model there (the template's Rules want the endpoint and the same model name).
    "SageMakerImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/onnxkit/endpoint:gpu-v1",
    "SageMakerModelDataUrl": "s3://existing-model-bucket/onnxkit/models/digits/1/model.tar.gz",
    "SageMakerModelName": "digits",
    "ModelBackend": "sagemaker",
}
# The GPU path on with everything else at its default: the container loads from the registry.
SAGEMAKER_FROM_REGISTRY = {
    "SageMakerImageUri": f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/onnxkit@sha256:{'0' * 64}",
}
# The production options: SnapStart on; provisioned concurrency with scaling and an alarm topic.
SNAPSTART = {"SnapStart": "Enabled"}
PROVISIONED = {
    "ProvisionedConcurrency": "2",
    "ProvisionedConcurrencyMax": "8",
    "AlarmTopicArn": "arn:aws:sns:eu-west-1:123456789012:onnxkit-alarms",
    "DeploymentType": "AllAtOnce",
}
# SageMakerMode's other shapes (the template's Rules want the image; async the payload bucket,
# which is on by default): an asynchronous endpoint scaling to zero on its backlog, and a
# real-time one through an inference component scaled to zero copies.
SAGEMAKER_ASYNC = {
    **SAGEMAKER_FROM_REGISTRY,
    "SageMakerMode": "async",
    "AsyncBacklogPerInstanceTarget": "10",
    "AsyncMaxConcurrentInvocationsPerInstance": "2",
}
SAGEMAKER_SCALE_TO_ZERO = {
    **SAGEMAKER_FROM_REGISTRY,
    "SageMakerMode": "scale-to-zero",
    "SageMakerCopyMemoryMB": "8192",
}
# Many models behind both functions, with a larger /tmp, and no payload bucket.
MANY_MODELS = {
    "Models": "*",
    "ModelsAllow": "digits,minilm*",
    "ModelsMemoryMB": "3072",
    "EphemeralStorageMB": "4096",
    "DeployZipVariant": "true",
    "PayloadUploads": "disabled",
}
FLIPPED = {
    "other-branches": OTHER_BRANCHES,
    "sagemaker-from-registry": SAGEMAKER_FROM_REGISTRY,
    "snapstart": SNAPSTART,
    "provisioned-concurrency": PROVISIONED,
    "sagemaker-async": SAGEMAKER_ASYNC,
    "sagemaker-scale-to-zero": SAGEMAKER_SCALE_TO_ZERO,
    "many-models": MANY_MODELS,
}


def _tool(env_var: str, venv_path: str) -> Path:
    """The tool binary named by env_var, else the one `make setup` puts in the repo."""
    path = Path(os.environ.get(env_var) or REPO / venv_path)
    if not path.is_file():
        pytest.skip(f"{path} not found: run `make setup` (or set {env_var})")
    return path


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        {
            "SAM_CLI_TELEMETRY": "0",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
    )
    return env


def _run(args: list[str | Path], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    print(f"$ {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}")
    return result


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _with_defaults(tmp_path: Path, label: str, overrides: Mapping[str, str]) -> Path:
    """template.yaml with these parameter defaults, as a JSON file."""
    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    for name, value in overrides.items():
        template["Parameters"][name]["Default"] = value
    path = tmp_path / f"template-{label}.json"
    path.write_text(json.dumps(template, indent=1))
    return path


@pytest.fixture
def flipped_templates(tmp_path: Path) -> list[Path]:
    """template.yaml with each FLIPPED set as its defaults, as JSON files."""
    return [_with_defaults(tmp_path, label, overrides) for label, overrides in FLIPPED.items()]


def test_sam_validate_lint(tmp_path: Path) -> None:
    sam = _tool("ONNXKIT_SAM", ".venv-sam/bin/sam")

    result = _run([sam, "validate", "--lint", "--template", TEMPLATE], _offline_env(tmp_path))

    _assert_ok(result)


def test_sam_translates_every_branch(tmp_path: Path, flipped_templates: list[Path]) -> None:
    """SAM CLI expands AWS::LanguageExtensions locally, then runs the SAM transform.

    Without the expansion the transform rejects the Fn::If in the API's Auth; with it, the
    default (API key, no zip, no endpoint) and the flipped sets (IAM, zip, existing bucket,
    the SageMaker endpoint with and without model data, asynchronous and scaled to zero, many
    models without a payload bucket) pass.
    """
    sam = _tool("ONNXKIT_SAM", ".venv-sam/bin/sam")
    env = _offline_env(tmp_path)
    # samconfig.toml turns lint on for validate, and lint replaces the transform run.
    no_lint_config = tmp_path / "samconfig-no-lint.toml"
    no_lint_config.write_text("version = 0.1\n")

    for template in (TEMPLATE, *flipped_templates):
        args = ["validate", "--language-extensions", "--template", template]
        result = _run([sam, *args, "--config-file", no_lint_config], env)
        _assert_ok(result)
        assert "valid SAM Template" in result.stdout
        assert "basic SAM Validation" in result.stdout, "the transform did not run"


def test_sam_validate_lint_of_flipped_defaults(
    tmp_path: Path, flipped_templates: list[Path]
) -> None:
    """cfn-lint (through sam) also sees the resources behind the flipped conditions."""
    sam = _tool("ONNXKIT_SAM", ".venv-sam/bin/sam")

    for template in flipped_templates:
        result = _run([sam, "validate", "--lint", "--template", template], _offline_env(tmp_path))
        _assert_ok(result)


def test_cfn_lint(tmp_path: Path, flipped_templates: list[Path]) -> None:
    cfn_lint = _tool("ONNXKIT_CFN_LINT", ".venv-sam/bin/cfn-lint")

    _assert_ok(_run([cfn_lint, TEMPLATE, *flipped_templates], _offline_env(tmp_path)))


def test_checkov(tmp_path: Path, flipped_templates: list[Path]) -> None:
    """No failed check; every skip in the template carries its reason inline."""
    skips = [
        (name, skip)
        for name, resource in yaml_parse(TEMPLATE.read_text())["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips, "the template's checkov skips were not found"
    for name, skip in skips:
        assert skip["id"].startswith("CKV_"), (name, skip)
        assert len(skip.get("comment", "").split()) >= 8, f"{name} skips {skip['id']} unexplained"
    checkov = _tool("ONNXKIT_CHECKOV", ".venv-checkov/bin/checkov")

    _assert_ok(_checkov(checkov, [TEMPLATE, *flipped_templates], _offline_env(tmp_path)))


def _checkov(
    checkov: Path, templates: list[Path], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """One checkov run over every template (one process: its start-up is most of the time);
    a failed check anywhere fails the run, and the output names the file."""
    common = ["--quiet", "--compact", "--skip-download", "--framework", "cloudformation"]
    return _run([checkov, *common, *(arg for t in templates for arg in ("-f", t))], env)


def _deployment_types() -> list[str]:
    spec = yaml_parse(TEMPLATE.read_text())["Parameters"]["DeploymentType"]
    return [value for value in spec["AllowedValues"] if value != spec["Default"]]


def test_every_deployment_type_passes_the_tools(tmp_path: Path) -> None:
    """The default type runs in the tests above; every other one here: cfn-lint (what sam
    validate --lint runs) over all of them in one process, then checkov likewise."""
    cfn_lint = _tool("ONNXKIT_CFN_LINT", ".venv-sam/bin/cfn-lint")
    checkov = _tool("ONNXKIT_CHECKOV", ".venv-checkov/bin/checkov")
    types = _deployment_types()
    assert len(types) >= 7, types  # the canary and linear shapes CodeDeploy offers
    templates = [_with_defaults(tmp_path, t, {"DeploymentType": t}) for t in types]
    env = _offline_env(tmp_path)

    _assert_ok(_run([cfn_lint, *templates], env))
    _assert_ok(_checkov(checkov, templates, env))
