"""The article's Keras example end to end, as `make example-keras` runs it: a Keras regression
trained and saved as a SavedModel, converted, quantized, published to a local S3, served by
start-api and asked through curl. The served prices are checked against TensorFlow's own
answers from the SavedModel, on the rows the request carried."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (convert-tensorflow)")


def test_the_keras_example_serves_what_tensorflow_answers(rie: Path, tmp_path: Path) -> None:
    # GIVEN nothing but the repository: the example trains its own model on generated data
    work = tmp_path / "keras"

    # WHEN the walkthrough runs every step
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "keras_example.py"), "--work", str(work)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    # THEN it ends well, having echoed each command it ran
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for command in ("examples build keras", "convert", "quantize", "publish", "local start-api"):
        assert f"onnxkit {command}" in done.stdout
    assert "$ curl -s -X POST" in done.stdout
    # ... the conversion passed parity against TensorFlow and int8 was chosen by the gate
    conversion = json.loads((work / "fp32" / "model.conversion.json").read_text())
    assert conversion["framework"] == "tensorflow"
    assert conversion["parity"]["passed"] is True
    # ... and the served prices are TensorFlow's own for the rows the request sent, within
    # int8's error (2% of the price scale)
    answer = json.loads((work / "answer.json").read_text())
    (sent,) = answer["request"]["inputs"]
    rows = np.asarray(sent["data"], dtype=np.float32).reshape(sent["shape"])
    serve = tf.saved_model.load(str(work / "saved_model")).signatures["serving_default"]
    want = serve(features=tf.constant(rows))["output_0"].numpy().ravel()
    served = np.asarray(answer["predicted"], dtype=np.float64)
    assert np.abs(served - want).max() <= 0.02 * np.abs(want).max()
    (output,) = answer["response"]["outputs"]
    assert output["shape"] == [len(rows), 1]
