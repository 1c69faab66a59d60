"""The ``onnxkit`` command line: help, exit codes, errors in our words, registry commands."""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from openapi_spec_validator import validate

from onnxkit.manifest import sha256_file
from onnxkit_tools.cli import cli, main
from onnxkit_tools.cli.build import EXIT_NONE_PASSED
from onnxkit_tools.local import api_gateway
from onnxkit_tools.quantize.report import REPORT_SCHEMA
from tests.unit.conftest import BuiltModel
from tests.unit.template_helpers import REPO
from tests.unit.tools.quantize.helpers import (
    SENTENCES,
    digits_files,
    embedding_model,
    text_model,
    token_ids,
    tokenizer_path,
    write_lines,
)

COMMANDS = [
    [],
    ["examples", "build"],
    ["quantize"],
    ["bench"],
    ["publish"],
    ["models"],
    ["models", "list"],
    ["models", "show"],
    ["models", "promote"],
    ["models", "rollback"],
    ["models", "pull"],
    ["local"],
    ["local", "s3"],
    ["local", "invoke"],
    ["local", "start-api"],
    ["local", "start-endpoint"],
    ["openapi"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "onnxkit")
def test_every_command_explains_itself(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert len(result.output.splitlines()) > 4


def test_the_version_is_printed() -> None:
    from onnxkit import __version__

    result = CliRunner().invoke(cli, ["--version"])

    assert result.output.strip() == f"onnxkit, version {__version__}"


def test_quantize_help_documents_the_budget_defaults() -> None:
    text = " ".join(CliRunner().invoke(cli, ["quantize", "--help"]).output.split())

    for phrase in ("--prefer", "min cosine >= 0.99", "min cosine >= 0.97", "1.05x", "exit status"):
        assert phrase in text


def test_quantize_writes_the_model_and_report_and_prints_every_candidate(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    embedding_model(source)
    np.savez(tmp_path / "cal.npz", **token_ids(16, seed=1))
    np.savez(tmp_path / "val.npz", **token_ids(16, seed=2))
    common = [
        "quantize",
        str(source),
        "--calibration",
        str(tmp_path / "cal.npz"),
        "--validation",
        str(tmp_path / "val.npz"),
        "--candidates",
        "dynamic-qint8-*",
        "--max-latency-ratio",
        "10",
    ]
    runner = CliRunner()

    # WHEN a budget can be met
    met = runner.invoke(
        cli,
        [*common, "--out", str(tmp_path / "q.onnx"), "--report", str(tmp_path / "r.json")],
        standalone_mode=False,
    )

    # THEN the model and the report are written and every candidate is in the table
    assert met.exit_code == 0, met.output
    assert met.return_value == 0
    assert "dynamic-qint8-tensor" in met.stdout
    assert "dynamic-qint8-channel" in met.stdout
    assert "<- chosen" in met.stdout
    assert (tmp_path / "q.onnx").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == REPORT_SCHEMA

    # WHEN no candidate can meet it: exit 3, nothing written, the limit named
    missed = runner.invoke(
        cli,
        [*common, "--out", str(tmp_path / "none.onnx"), "--max-size-ratio", "0.01"],
        standalone_mode=False,
    )
    assert missed.return_value == EXIT_NONE_PASSED
    assert "size 0." in missed.stderr
    assert "> 0.01x" in missed.stderr
    assert "--max-size-ratio" in missed.stderr
    assert not (tmp_path / "none.onnx").exists()
    assert "fail: size" in missed.stdout


def test_quantize_help_documents_text_and_image_data() -> None:
    text = " ".join(CliRunner().invoke(cli, ["quantize", "--help"]).output.split())

    for phrase in (
        "--tokenizer FILE",
        "--preprocess FILE",
        "--labels FILE",
        "a folder is images, .npz arrays, anything else text",
        "-label-<class index>",
        "val/<class>/<image>",
        "--validation val.txt --tokenizer tokenizer.json",
        "--validation val-images/ --preprocess image.json --labels labels.txt",
    ):
        assert phrase in text, phrase


@pytest.mark.parametrize("command", ["quantize", "publish"])
def test_quantize_and_publish_take_the_same_tokenizer_options(command: str) -> None:
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())

    assert "--max-length INTEGER RANGE tokens per sentence" in text
    assert "[default: 128; 1<=x<=1000000]" in text
    assert "--truncation / --no-truncation" in text
    assert "--padding [longest|max_length]" in text


def test_quantize_reads_image_folders_through_the_declaration(tmp_path: Path) -> None:
    # GIVEN the digits files: a classifier, its validation rows as npz and as labelled images
    digits = digits_files(tmp_path / "digits")
    common = ["quantize", str(digits / "model.onnx"), "--candidates", "dynamic-qint8-*"]
    common += ["--max-latency-ratio", "10"]
    runner = CliRunner()

    # WHEN it is quantized from the image folders, and from the arrays
    images = runner.invoke(
        cli,
        [
            *common,
            *("--calibration", str(digits / "calibration")),
            *("--validation", str(digits / "validation")),
            *("--preprocess", str(digits / "image.json")),
            *("--out", str(tmp_path / "int8.onnx"), "--report", str(tmp_path / "images.json")),
        ],
        standalone_mode=False,
    )
    arrays = runner.invoke(
        cli,
        [
            *common,
            *("--calibration", str(digits / "validation.npz")),
            *("--validation", str(digits / "validation.npz")),
            *("--out", str(tmp_path / "q.onnx"), "--report", str(tmp_path / "arrays.json")),
        ],
        standalone_mode=False,
    )

    # THEN both judge the same model on the same rows: fp32 accuracy is the same
    assert images.return_value == 0, images.output
    assert arrays.return_value == 0, arrays.output
    by_images = json.loads((tmp_path / "images.json").read_text())
    by_arrays = json.loads((tmp_path / "arrays.json").read_text())
    assert by_images["data"]["validation_rows"] == by_arrays["data"]["validation_rows"] == 200
    assert by_images["data"]["labels"] is True
    assert by_images["fp32"]["quality"]["accuracy"] == by_arrays["fp32"]["quality"]["accuracy"]
    assert by_images["data"]["processing"]["image"]["feeds"] == "input"
    assert "processing" not in by_arrays["data"]
    # AND the output says what was read, how, and how to publish it with the same processing
    assert f"validation: {digits / 'validation'}: 200 images -> --preprocess" in images.stdout
    assert "labels: file names (-label-<class index>)" in images.stdout
    assert f"onnxkit publish {tmp_path / 'int8.onnx'} --name NAME --preprocess" in images.stdout
    assert "200 rows of input, label, as is" in arrays.stdout
    assert "onnxkit publish" not in arrays.stdout


def test_quantize_reads_text_files_with_the_tokenizer_options(tmp_path: Path) -> None:
    text_model(tmp_path / "model.onnx")
    write_lines(tmp_path / "cal.txt", SENTENCES)
    write_lines(tmp_path / "val.txt", SENTENCES[::-1])
    args = ["quantize", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "q.onnx")]
    args += ["--calibration", str(tmp_path / "cal.txt"), "--validation", str(tmp_path / "val.txt")]
    args += ["--tokenizer", str(tokenizer_path()), "--max-length", "20", "--padding", "max_length"]
    args += ["--candidates", "dynamic-qint8-*", "--max-latency-ratio", "10"]

    result = CliRunner().invoke(
        cli, [*args, "--report", str(tmp_path / "r.json")], standalone_mode=False
    )

    assert result.return_value == 0, result.output
    text = json.loads((tmp_path / "r.json").read_text())["data"]["processing"]["text"]
    assert (text["max_length"], text["padding"], text["truncation"]) == (20, "max_length", True)
    assert f"5 sentences -> --tokenizer {tokenizer_path()}" in result.stdout
    assert "input_ids, attention_mask [5 x 20]" in result.stdout
    assert "--max-length 20 --truncation --padding max_length" in result.stdout


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("val.txt", "is read as text (one sentence per line"),
        ("images", "is a folder, read as images: add --preprocess image.json"),
    ],
)
def test_data_without_its_processing_option_says_which_option_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str, message: str
) -> None:
    embedding_model(tmp_path / "model.onnx")
    np.savez(tmp_path / "cal.npz", **token_ids(16, seed=1))
    write_lines(tmp_path / "val.txt", SENTENCES)
    (tmp_path / "images").mkdir()
    args = ["quantize", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "q.onnx")]
    args += ["--calibration", str(tmp_path / "cal.npz"), "--validation", str(tmp_path / data)]

    code = main(args)

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error [quantize_error]: validation data {tmp_path / data} ")
    assert message in err


def test_a_missing_input_file_is_a_usage_error_before_any_work(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.onnx")
    args = ["quantize", missing, "--out", "x", "--calibration", "c", "--validation", "v"]

    code = main(args)

    assert code == 2


def test_the_registry_commands_round_trip_a_model(
    tiny_model: BuiltModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"file://{tmp_path / 'store'}"

    # GIVEN two published versions, prod on the second
    publish = ["publish", str(tiny_model.path), "--name", "tiny", "--store", store]
    assert main([*publish, "--alias", "prod"]) == 0
    assert main(publish) == 0
    assert main(["models", "promote", "tiny", "2", "--store", store]) == 0
    published = capsys.readouterr().out
    assert "published tiny version 1" in published
    assert "tiny@prod: 1 -> 2" in published

    # WHEN they are listed, shown, rolled back and pulled
    assert main(["models", "list", "--store", store]) == 0
    assert capsys.readouterr().out == "tiny: versions 1, 2; aliases prod->2\n"
    assert main(["models", "show", "tiny@1", "--store", store]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert main(["models", "rollback", "tiny", "--store", store]) == 0
    assert "tiny@prod: 2 -> 1 (rolled back)" in capsys.readouterr().out
    out = tmp_path / "pulled"
    assert main(["models", "pull", "tiny", "--out", str(out), "--store", store]) == 0

    # THEN the manifest is version 1's, and the pulled folder holds the verified files
    assert shown["version"] == "1"
    assert shown["files"][0]["sha256"] == sha256_file(tiny_model.path)
    assert sha256_file(out / "model.onnx") == sha256_file(tiny_model.path)
    assert json.loads((out / "manifest.json").read_text())["version"] == "1"
    # (with the CPU twin publish made beside the graph)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.cpu.onnx",
        "model.onnx",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled-")]  # no leftovers


def test_registry_errors_are_in_our_words_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"file://{tmp_path / 'empty'}"

    code = main(["models", "show", "nothing", "--store", store])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error [model_not_found]: model 'nothing' has no alias 'prod'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "list"], "no model store: pass --store"),
        (["models", "list", "--store", "http://bucket/x"], "is not s3://bucket/prefix"),
    ],
)
def test_a_missing_or_bad_store_is_a_usage_error(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONNXKIT_MODEL_STORE", raising=False)

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 2
    assert message in result.output


def test_the_store_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: BuiltModel
) -> None:
    monkeypatch.setenv("ONNXKIT_MODEL_STORE", f"file://{tmp_path / 'env-store'}")

    assert main(["publish", str(tiny_model.path), "--name", "tiny"]) == 0
    assert (tmp_path / "env-store" / "models" / "tiny" / "1" / "manifest.json").is_file()


@pytest.mark.parametrize("edge", ["function", "endpoint"])
def test_openapi_prints_a_valid_document(edge: str) -> None:
    result = CliRunner().invoke(cli, ["openapi", "--edge", edge])

    document = json.loads(result.stdout)
    validate(document)
    assert ("/ping" in document["paths"]) is (edge == "endpoint")


def test_start_endpoint_refuses_a_mistyped_model_dir_at_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["local", "start-endpoint", "--model-dir", str(tmp_path / "typo")]
    )

    assert result.exit_code == 2
    assert "does not exist" in result.output


# The module, not the `local` command group that onnxkit_tools.cli exports under its name
local_cli = importlib.import_module("onnxkit_tools.cli.local")


class _StartedApis:
    """Stands in for the emulator, the local store and LocalApi: records what start-api builds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.binary_media_types: list[tuple[str, ...]] = []
        recorded = self.binary_media_types

        class Emulator(contextlib.nullcontext):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(self)

            def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
                raise AssertionError("nothing is served in this test")

        class LocalApi:
            url = "http://127.0.0.1:0"

            def __init__(self, invoke: Any, port: int, **kwargs: Any) -> None:
                recorded.append(kwargs["binary_media_types"])

            def serve_forever(self) -> None:
                return None

        monkeypatch.setattr(local_cli, "Emulator", Emulator)
        monkeypatch.setattr(local_cli, "with_local_store", contextlib.nullcontext)
        monkeypatch.setattr(api_gateway, "LocalApi", LocalApi)


def test_start_api_serves_the_templates_binary_media_types_or_the_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN start-api run from the project folder, with nothing started for real
    monkeypatch.chdir(REPO)
    started = _StartedApis(monkeypatch)

    # WHEN it starts without, then with --binary-media-type (SAM's ~1 spelling accepted)
    default = CliRunner().invoke(cli, ["local", "start-api"])
    options = [
        "--binary-media-type",
        "image~1png",
        "--binary-media-type",
        "application/octet-stream",
    ]
    given = CliRunner().invoke(cli, ["local", "start-api", *options])

    # THEN the first serves template.yaml's types, the second exactly the options
    assert (default.exit_code, given.exit_code) == (0, 0), default.output + given.output
    assert started.binary_media_types == [("*/*",), ("image/png", "application/octet-stream")]
    assert "binary media types: */*" in default.output


def test_start_api_refuses_a_bad_media_type_or_a_missing_template_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _StartedApis(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no template.yaml here
    function_dir = str(REPO / "functions" / "predict")

    bad = CliRunner().invoke(
        cli, ["local", "start-api", "--function-dir", function_dir, "--binary-media-type", "png"]
    )
    missing = CliRunner().invoke(cli, ["local", "start-api", "--function-dir", function_dir])

    assert bad.exit_code == missing.exit_code == 2
    assert "'png' is not a media type" in bad.output
    assert "cannot read template.yaml" in missing.output
    assert "--binary-media-type" in missing.output
    assert started.binary_media_types == []


def test_start_api_takes_its_port_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a port some other socket already listens on, and a store and emulator that must
    # not start
    import socket

    monkeypatch.chdir(REPO)
    started: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        started.append("store")
        raise AssertionError("started before the port was taken")

    monkeypatch.setattr(local_cli, "with_local_store", refuse)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # WHEN start-api is asked for that port
        result = CliRunner().invoke(cli, ["local", "start-api", "--port", str(port)])

    # THEN it fails at once, saying which port and what to do, with nothing started
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "--port" in result.output
    assert started == []


def test_publish_takes_the_tokenizer_a_conversion_report_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a text model with the conversion report onnxkit convert writes for a checkpoint:
    # the tokenizer copied beside the model, named in the report
    text_model(tmp_path / "model.onnx")
    copied = tmp_path / "model.tokenizer.json"
    copied.write_bytes(tokenizer_path().read_bytes())
    report = tmp_path / "model.conversion.json"
    report.write_text(json.dumps({"schema": "onnxkit.conversion/1", "tokenizer": copied.name}))
    store = f"file://{tmp_path / 'store'}"

    # WHEN it is published with that report and no --tokenizer
    publish = ["publish", str(tmp_path / "model.onnx"), "--report", str(report), "--store", store]
    code = main([*publish, "--name", "t"])

    # THEN the version takes sentences through that very tokenizer, and says where it came from
    assert code == 0
    printed = capsys.readouterr().out
    assert f"tokenizer {copied} (copied by onnxkit convert" in printed
    assert main(["models", "show", "t@1", "--store", store]) == 0
    shown = json.loads(capsys.readouterr().out)
    tokenizer = shown["processing"]["text"]["tokenizer"]
    (entry,) = [f for f in shown["files"] if f["path"] == tokenizer]
    assert entry["sha256"] == sha256_file(tokenizer_path())
    assert shown["conversion"]["tokenizer"] == copied.name

    # ... and a report naming a tokenizer that is not there is refused before any upload
    copied.unlink()
    assert main([*publish, "--name", "u"]) == 2
    assert "not beside it" in capsys.readouterr().err
