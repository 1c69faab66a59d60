"""`onnxkit publish` with processing options: the declaration and its files in the store, shown
by `models show`, and served: a PNG in, the class scores computed here by hand out."""

from __future__ import annotations

import io
import json
import subprocess
import sys
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


# --- oversize image declarations: refused at publish, before anything is stored or allocated ---


@pytest.fixture
def pixels_model(tmp_path: Path) -> Path:
    """x FLOAT [N, 3, H, W] (any height and width) -> GlobalAveragePool -> y FLOAT [N, 3]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["y"], axis=1),
        ],
        "pixels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pixels-src" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path))
    return path


def publish_pixels(model: Path, declaration: dict[str, object], tmp_path: Path) -> list[str]:
    """The publish command line for ``model`` with ``declaration`` as its --preprocess file."""
    (tmp_path / "image.json").write_text(json.dumps(declaration))
    return ["publish", str(model), "--name", "pixels", "--store", f"file://{tmp_path / 'store'}",
            "--preprocess", str(tmp_path / "image.json"), "--backend", "sagemaker"]  # fmt: skip


@pytest.mark.parametrize(
    ("declaration", "fragment"),
    [
        ({"resize": [100_000, 100_000]}, "resize 100000x100000: each side must be at most 8192"),
        ({"resize": [9000, 9000]}, "resize 9000x9000: each side must be at most 8192"),
        ({"crop": [9000, 9000]}, "crop 9000x9000: each side must be at most 8192"),
        ({"resize_shorter": 9000}, "resize_shorter 9000 must be at most 8192"),
        ({"resize_shorter": 5000}, "resize_shorter 5000 makes at least 25000000 pixels"),
        ({"max_pixels": 2**40}, "max_pixels 1099511627776 must be at most 67108864"),
    ],
)
def test_oversize_image_declarations_are_refused_at_publish(
    pixels_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    declaration: dict[str, object],
    fragment: str,
) -> None:
    code = main(publish_pixels(pixels_model, declaration, tmp_path))

    err = capsys.readouterr().err
    assert code == 1, err
    assert "error [invalid_processing]" in err
    assert f"--preprocess {tmp_path / 'image.json'}: image processing: {fragment}" in err
    assert not (tmp_path / "store" / "models").exists()


def test_a_declaration_within_the_bounds_is_published(
    pixels_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The model takes any size: only the declaration's sizes decide the refusals above.
    declaration = {"resize": [8192, 8192], "max_pixels": 8192 * 8192}

    code = main(publish_pixels(pixels_model, declaration, tmp_path))

    assert code == 0, capsys.readouterr().err
    manifest = Manifest.from_json((tmp_path / "store/models/pixels/1/manifest.json").read_bytes())
    assert manifest.processing is not None
    assert manifest.processing["image"]["resize"] == [8192, 8192]


_PUBLISH_MEASURED = """
import json, resource, sys
from onnxkit_tools.cli import main

runs = json.loads(sys.argv[1])
main(runs[0])  # every import warmed (this one is refused too)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
codes = [main(argv) for argv in runs]
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"codes": codes, "grew_kib": grew}))
"""


def test_oversize_resizes_are_refused_at_publish_without_allocating(
    pixels_model: Path, tmp_path: Path
) -> None:
    # GIVEN publish runs with resize 100000x100000 and 9000x9000, each in its own folder
    runs = []
    for side in (100_000, 9000):
        folder = tmp_path / str(side)
        folder.mkdir()
        runs.append(publish_pixels(pixels_model, {"resize": [side, side]}, folder))

    # WHEN a fresh process runs them
    result = subprocess.run(
        [sys.executable, "-c", _PUBLISH_MEASURED, json.dumps(runs)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[4],
    )  # fmt: skip

    # THEN both are refused and the peak memory did not move
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["codes"] == [1, 1], result.stderr
    assert outcome["grew_kib"] < 16 * 1024, outcome
    assert "each side must be at most 8192" in result.stderr
