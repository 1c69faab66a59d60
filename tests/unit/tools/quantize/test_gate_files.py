"""The gate fed the files people have: a folder of digit images, a text file of sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxkit.session import load_session
from onnxkit_tools.processing import ProcessingOptions
from onnxkit_tools.quantize.gate import GateOptions, quantize_with_gate
from onnxkit_tools.quantize.report import format_table
from tests.unit.tools.quantize.helpers import (
    LOOSE_LATENCY,
    SENTENCES,
    digits_files,
    quick_timing,
    reference_tokens,
    text_model,
    tokenizer_path,
    write_lines,
)

QUICK_DYNAMIC = GateOptions(candidates=("dynamic-qint8-*",), batch=64, **quick_timing())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_files(tmp_path_factory.mktemp("digits"))


def _batched(model: Path, feed: dict[str, np.ndarray], output: str, batch: int) -> np.ndarray:
    session = load_session(model)
    rows = len(next(iter(feed.values())))
    return np.concatenate(
        [
            session.run([output], {k: v[i : i + batch] for k, v in feed.items()})[0]
            for i in range(0, rows, batch)
        ]
    )


def test_the_gate_judges_a_classifier_on_an_image_folder(digits: Path, tmp_path: Path) -> None:
    # WHEN the gate runs on image folders, through the image declaration
    target = tmp_path / "int8" / "model.onnx"
    report = quantize_with_gate(
        digits / "model.onnx",
        target,
        digits / "calibration",
        digits / "validation",
        LOOSE_LATENCY,
        QUICK_DYNAMIC,
        processing=ProcessingOptions(preprocess=digits / "image.json"),
    )

    # THEN its accuracies are those onnxruntime gives on the npz rows the images render
    npz = dict(np.load(digits / "validation.npz"))
    labels = npz.pop("label")
    batch = report.settings["batch"]
    fp32 = _batched(digits / "model.onnx", npz, "label", batch)
    assert report.task == "classification"
    assert report.data["labels"] is True
    assert report.data["validation_rows"] == len(labels) == 200
    assert report.data["calibration_rows"] == 96
    assert report.fp32["quality"]["accuracy"] == pytest.approx(np.mean(fp32 == labels), abs=1e-12)
    assert report.fp32["quality"]["accuracy"] > 0.9  # a classifier, not chance
    chosen = report.chosen_candidate
    assert chosen is not None
    int8 = _batched(target, npz, "label", batch)
    assert chosen.quality["accuracy"] == pytest.approx(np.mean(int8 == labels), abs=1e-12)
    assert chosen.quality["agreement"] == pytest.approx(np.mean(int8 == fp32), abs=1e-12)
    # AND the report says what was read and which declaration it went through
    assert set(report.data["processing"]) == {"image"}
    image = report.data["processing"]["image"]
    assert (image["feeds"], image["layout"], image["scale"]) == ("input", "NF", 1 / 15)
    assert "200 images" in report.data["validation_source"]
    assert "file names (-label-<class index>)" in report.data["validation_source"]
    assert "labels: none" in report.data["calibration_source"]
    table = format_table(report)
    assert report.data["validation_source"] in table.splitlines()[1:3]


def test_the_gate_runs_on_text_files_in_batches(tmp_path: Path) -> None:
    # GIVEN a text embedder and files of sentences; more rows than one batch
    text_model(tmp_path / "model.onnx")
    lines = [f"{sentence} #{index}" for index in range(9) for sentence in SENTENCES]
    write_lines(tmp_path / "val.txt", lines)
    write_lines(tmp_path / "cal.txt", lines[::-1][:20])
    options = GateOptions(candidates=("dynamic-qint8-*",), batch=16, **quick_timing())

    # WHEN the gate runs on them with the tokenizer options publish takes
    report = quantize_with_gate(
        tmp_path / "model.onnx",
        tmp_path / "int8.onnx",
        tmp_path / "cal.txt",
        tmp_path / "val.txt",
        LOOSE_LATENCY,
        options,
        processing=ProcessingOptions(tokenizer=tokenizer_path(), max_length=20),
    )

    # THEN the fp32 reference is the model run on the tokenizer's own output, batch by batch
    assert report.task == "embedding"
    assert report.data["validation_rows"] == len(lines) == 45
    assert report.data["processing"]["text"]["max_length"] == 20
    assert report.data["processing"]["text"]["feeds"] == {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
    }
    assert "45 sentences" in report.data["validation_source"]
    chosen = report.chosen_candidate
    assert chosen is not None
    tokens = reference_tokens(lines, 20, fixed=False)
    feed = {k: tokens[k] for k in ("input_ids", "attention_mask")}
    expected = _batched(tmp_path / "model.onnx", feed, "embedding", 16)
    actual = _batched(tmp_path / "int8.onnx", feed, "embedding", 16)
    cosines = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1)
    cosines /= np.linalg.norm(expected, axis=1)
    assert chosen.quality["cosine_min"] == pytest.approx(cosines.min(), abs=1e-6)
