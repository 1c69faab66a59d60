"""`sam build PredictZipFunction` without Docker: the zip variant and its layer really build."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.tools]


def test_zip_variant_and_layer_build_with_python312(tmp_path: Path) -> None:
    sam = Path(os.environ.get("ONNXKIT_SAM") or REPO / ".venv-sam" / "bin" / "sam")
    if not sam.is_file():
        pytest.skip(f"{sam} not found: run `make setup` (aws-sam-cli lives in its own venv)")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    env.setdefault("PYENV_VERSION", "3.11.7:3.12.1")  # lambda-builders needs python3.12 on PATH
    if shutil.which("python3.12", path=env.get("PATH")) is None:
        pytest.skip("python3.12 is not on PATH: the python3.12 layer cannot be built here")

    # WHEN sam builds only the zip function (and the layer it uses), into a scratch folder
    build = tmp_path / "build"
    result = subprocess.run(
        [str(sam), "build", "PredictZipFunction", "--template", "template.yaml",
         "--build-dir", str(build)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # THEN the function holds app.py and the layer holds onnxkit with its runtime packages
    assert (build / "PredictZipFunction" / "app.py").is_file()
    layer = build / "OnnxkitLayer" / "python"
    for package in ("onnxkit/predictor.py", "onnxruntime", "numpy", "aws_lambda_powertools",
                    "PIL", "tokenizers"):  # fmt: skip
        assert (layer / package).exists(), f"{package} missing from the layer"
    # AND the runtime package alone: every runtime module, none of the tooling or its packages
    runtime = REPO / "layers" / "onnxkit" / "onnxkit"
    expected = {p.relative_to(runtime).as_posix() for p in runtime.rglob("*.py")}
    shipped = {
        p.relative_to(layer / "onnxkit").as_posix() for p in (layer / "onnxkit").rglob("*.py")
    }
    assert shipped == expected
    tooling = {"onnxkit_tools", "click", "onnx", "sklearn", "skl2onnx", "tqdm", "moto", "torch",
               "uvicorn", "starlette", "huggingface_hub"}  # fmt: skip
    assert not tooling & {p.name for p in layer.iterdir()}
    built = (build / "template.yaml").read_text()
    assert "OnnxkitLayer" in built
    # and it fits Lambda's 250 MB unzipped limit for function + layers
    size = sum(p.stat().st_size for p in build.rglob("*") if p.is_file())
    assert size < 250 * 1024 * 1024, f"{size / 1e6:.0f} MB unzipped"
