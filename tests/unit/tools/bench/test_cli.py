"""``onnxkit bench`` on the command line: help, bad input refused before any timing, and the
inputs it makes from a model's signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxkit_tools.bench.errors import BenchError
from onnxkit_tools.bench.measure import BenchOptions, input_plan, make_feed
from onnxkit_tools.cli import cli, main


def text_model(folder: Path) -> Path:
    """Token ids and a mask in ([batch, seq] each), their float sum out: a BERT-like signature."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["ids_f", "mask_f"], ["y"]),
        ],
        "text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(proto, str(path))
    return path


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(cli, ["bench", "--help"])

    assert result.exit_code == 0, result.output
    for option in (
        "--out",
        "--batch",
        "--seq-len",
        "--sample",
        "--seconds",
        "--min-repeats",
        "--max-repeats",
        "--max-vcpus",
        "--utilization",
        "--latency-target-ms",
        "--instances",
        "--prices",
        "--replace-prices",
        "--quiet",
    ):
        assert option in result.output, option
    assert "1,769 MB" in result.output
    assert "break-even" in result.output


def test_a_file_that_is_not_onnx_is_an_error_in_our_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not a model")

    code = main(["bench", str(model), "--out", str(tmp_path / "out"), "--quiet"])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error [bench_error]: onnxruntime could not load model.onnx")
    assert not (tmp_path / "out").exists()


def test_a_bad_prices_file_fails_before_anything_is_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = text_model(tmp_path / "m")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"lambda": {"request_per_million": "free"}}))

    code = main(["bench", str(model), "--out", str(tmp_path / "out"), "--prices", str(prices)])

    assert code == 1
    err = capsys.readouterr().err
    assert "error [bench_error]" in err
    assert "lambda.request_per_million must be a number" in err
    assert "measuring" not in err  # no progress: nothing was timed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--replace-prices"], "--replace-prices needs --prices"),
        (["--utilization", "1.5"], "--utilization"),
        (["--seconds", "0"], "--seconds"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, arguments: list[str], message: str) -> None:
    model = text_model(tmp_path / "m")

    result = CliRunner().invoke(cli, ["bench", str(model), "--out", str(tmp_path), *arguments])

    assert result.exit_code == 2
    assert message in result.output


def test_inputs_follow_the_signature(tmp_path: Path) -> None:
    model = text_model(tmp_path / "m")

    plan, batch = input_plan(model, BenchOptions(batch=4, seq_len=16))
    feed = make_feed(plan, batch)

    assert batch == 4
    assert feed["input_ids"].shape == (4, 16)
    assert feed["input_ids"].dtype == np.int64
    assert feed["input_ids"].min() >= 0
    assert feed["input_ids"].max() < 100
    assert (feed["attention_mask"] == 1).all()


def test_a_sample_fills_the_batch_and_must_name_every_input(tmp_path: Path) -> None:
    model = text_model(tmp_path / "m")
    plan, _ = input_plan(model, BenchOptions())
    good = tmp_path / "good.npz"
    np.savez(good, input_ids=np.array([[5, 6, 7]]), attention_mask=np.array([[1, 1, 0]]))
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.array([[5, 6, 7]]))

    feed = make_feed(plan, 3, good)

    assert feed["input_ids"].tolist() == [[5, 6, 7]] * 3
    with pytest.raises(BenchError, match="no array 'attention_mask'"):
        make_feed(plan, 3, bad)
