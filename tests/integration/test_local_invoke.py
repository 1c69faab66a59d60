"""Every file in events/ through `onnxkit local invoke`: the emulator, awslambdaric, moto S3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EVENT_FILES, REPO, expected_code, expected_status
from tests.integration.conftest import ONNXKIT, cli_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.stem)
def test_local_invoke_returns_the_status_in_the_name(
    event_file: Path, rie: Path, env_vars: Path
) -> None:
    # WHEN the CLI invokes the function under the emulator with this event
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", str(event_file), "--env-vars", str(env_vars)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # THEN it exits 0 and stdout is exactly the Lambda proxy response
    assert result.returncode == 0, result.stderr[-3000:]
    response = json.loads(result.stdout)
    status = expected_status(event_file)
    assert response["statusCode"] == status, response
    body = json.loads(response["body"])
    if status >= 400:
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == expected_code(event_file)


def test_local_invoke_starts_its_own_s3_when_none_is_configured(rie: Path, tmp_path: Path) -> None:
    # GIVEN no endpoint and no env-vars file: the command must start moto and seed the default
    env = cli_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # build the default model from scratch
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", "events/predict_infer_200.json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    body = json.loads(json.loads(result.stdout)["body"])
    assert body["outputs"][0]["data"] == [0]
    assert "started a local S3 (moto) at http://127.0.0.1:" in result.stderr


def test_missing_event_file_is_a_clear_error(rie: Path) -> None:
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", "events/nope.json"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # a usage error, as click (and argparse) report them
    assert "'events/nope.json' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
