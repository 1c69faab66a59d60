"""`onnxkit publish` with processing options: the declaration and its files in the store, shown
by `models show`, and served: a PNG in, the class scores computed here by hand out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from onnxkit.compose import build_predictor
from onnxkit.manifest import Manifest, sha256_file
from onnxkit.settings import Settings
from onnxkit_tools.cli import main
from tests.unit.conftest import BIAS, WEIGHTS, BuiltModel

IMAGE = {"color": "L", "layout": "NF", "scale": 0.01}  # 2x2 pixels -> x [1, 4]


def png(pixels: list[list[int]]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.array(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def published(tiny_model: BuiltModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """tiny (x FP32 [N, 4] -> y FP32 [N, 2]) published with image preprocessing and labels."""
    (tmp_path / "image.json").write_text(json.dumps(IMAGE))
    (tmp_path / "classes.txt").write_text("cold\nhot\n")
    root = tmp_path / "store"
    code = main(
        ["publish", str(tiny_model.path), "--name", "tiny", "--alias", "prod",
         "--store", f"file://{root}", "--preprocess", str(tmp_path / "image.json"),
         "--labels", str(tmp_path / "classes.txt"), "--top-k", "2", "--softmax",
         # sagemaker: the Lambda init-budget check (a fresh interpreter) is not this test's
         "--backend", "sagemaker"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "processing images -> 'image' (feeds 'x'); y: softmax, top 2 with labels" in (
        capsys.readouterr().out
    )
    return root


def test_the_declaration_and_its_files_are_stored_and_checksummed(
    published: Path, tmp_path: Path
) -> None:
    manifest = Manifest.from_json((published / "models/tiny/1/manifest.json").read_bytes())

    assert manifest.processing is not None
    assert manifest.processing["image"]["feeds"] == "x"  # the model's only input
    assert manifest.processing["postprocess"][0]["labels"] == "labels.txt"
    stored = {entry.path: entry for entry in manifest.processing_files}
    assert set(stored) == {"labels.txt"}
    assert stored["labels.txt"].sha256 == sha256_file(tmp_path / "classes.txt")
    assert (published / "models/tiny/1/labels.txt").read_text() == "cold\nhot\n"
    assert [f.path for f in manifest.model_files] == ["model.onnx"]


def test_models_show_prints_the_processing(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["models", "show", "tiny", "--store", f"file://{published}"])

    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["processing"]["image"]["layout"] == "NF"
    assert "processing: images -> 'image'" in captured.err


def test_a_png_is_served_through_the_published_processing(published: Path, tmp_path: Path) -> None:
    # GIVEN the endpoint's predictor over the store
    settings = Settings.from_env(
        {"ONNXKIT_MODEL_STORE": f"file://{published}", "ONNXKIT_MODEL_NAME": "tiny",
         "ONNXKIT_CACHE_DIR": str(tmp_path / "cache")}
    )  # fmt: skip
    predictor = build_predictor(settings, role="endpoint")
    assert predictor.try_load()

    # WHEN a 2x2 PNG is posted as the body
    reply = predictor.infer("tiny", None, png([[100, 0], [50, 200]]), content_type="image/png")

    # THEN y is the pixels x 0.01 through the graph, softmaxed, with its labels (numpy here)
    x = np.array([[1.0, 0.0, 0.5, 2.0]], np.float32)
    logits = x @ WEIGHTS + BIAS
    expected = np.exp(logits) / np.exp(logits).sum()
    outputs = {o["name"]: o for o in json.loads(reply.body)["outputs"]}
    np.testing.assert_allclose(outputs["y"]["data"], expected.ravel(), rtol=1e-5)
    order = np.argsort(-expected.ravel())
    assert outputs["top_labels"]["data"] == [["cold", "hot"][i] for i in order]


def test_options_that_do_not_fit_the_model_are_refused_before_uploading(
    tiny_model: BuiltModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")  # y has 2 classes
    root = tmp_path / "store"

    code = main(
        ["publish", str(tiny_model.path), "--name", "tiny", "--store", f"file://{root}",
         "--labels", str(tmp_path / "three.txt"), "--backend", "sagemaker"]
    )  # fmt: skip

    assert code == 1
    assert "error [invalid_processing]" in capsys.readouterr().err
    assert not (root / "models").exists()
