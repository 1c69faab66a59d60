"""``onnxkit convert``: a framework model to ONNX, checked against the framework."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkit_tools.convert import (
    DEFAULT_OPSET,
    FRAMEWORKS,
    Tolerance,
    convert_model,
    report_path,
)
from onnxkit_tools.convert.convert import DEFAULT_ROWS
from onnxkit_tools.convert.huggingface import DEFAULT_TASK, TASKS
from onnxkit_tools.convert.parity import MAX_ABS_ERROR, MIN_COSINE

_DETAILS = f"""\
SOURCE is module:attribute, code on your machine that holds a model (a fitted scikit-learn
estimator or pipeline, a PyTorch module, a Keras model) or a function returning one (the
current folder is importable); a TorchScript archive (.pt/.pth/.ts); or a pickle (.joblib/.pkl,
or a module saved whole with torch.save), read only with --allow-pickle because unpickling runs
whatever code the file names. A state dict holds weights only: point at the code that builds
the module.

A folder with config.json is a Hugging Face transformers checkpoint (read offline): --task
picks the head and the output (feature-extraction: last_hidden_state; sentence-embedding:
mean-pooled over the mask, L2-normalized; text-/token-classification: logits); its inputs are
the tokenizer's, the sample is built-in sentences, and tokenizer.json is copied beside the
model as MODEL.tokenizer.json (onnxkit publish --report MODEL.conversion.json publishes it).

A folder with saved_model.pb is a TensorFlow SavedModel, converted through tf2onnx from its
serving_default signature (its input and output names, and its None axes dynamic); a .keras or
.h5 file (or module:attribute) is a Keras model, loaded in safe mode (a Lambda layer's code is
refused, not run) and exported to a SavedModel first: its inputs are named after its Input
layers, its outputs output_0, output_1, ... (pip install 'onnxkit[convert-tensorflow]').

PyTorch modules go through torch.onnx.export with axis 0 of every input dynamic ("batch"), and
axis 1 too ("sequence") for token ids (2-D integers) and 3-D float inputs; --dynamic-axes
NAME=0:batch,1:sequence replaces one input's (NAME= exports it static). Outputs are named
output (output_0, output_1, ... for several). Random rows come from the first layer: Linear,
Conv1d/Conv2d or Embedding; for TensorFlow, from the signature's float inputs.

The source framework and onnxruntime then answer the same rows: --sample FILE.npz (one array,
or one per input named as forward names them; scikit-learn: rows x features, or X), or --rows
random rows shaped from the model. Per
output: max abs error and minimum cosine for scores, probabilities and regressions (passes
when max abs <= --max-abs-error or cosine >= --min-cosine; defaults {MAX_ABS_ERROR:g} and
{MIN_COSINE:g}), identical labels for classifiers; for scores with several values per row
(logits, probabilities) the share of rows whose top-1 agrees is reported too. The ONNX model
runs all rows in one batch and the first row alone, so a batch axis fixed at export is caught.

\b
Writes MODEL.conversion.json beside --out either way; --out itself only when every output
passes. Classifiers get a plain probabilities tensor (no ZipMap), which onnxkit serves as is.

\b
exit status: 0 converted; 1 the source cannot be read or converted, or parity failed (the
message names the output and the worst sample row).

\b
examples:
  onnxkit convert mymodels:build_regressor --out build/regressor/model.onnx
  onnxkit convert model.joblib --allow-pickle --sample rows.npz --out build/clf/model.onnx
  onnxkit convert encoder.ts --sample tokens.npz --out build/encoder/model.onnx
  onnxkit convert ./my-bert --task text-classification --out build/bert/model.onnx
  onnxkit convert ./saved_model --out build/regressor/model.onnx
"""


def _parse_axes(values: tuple[str, ...]) -> dict[str, dict[int, str]] | None:
    if not values:
        return None
    axes: dict[str, dict[int, str]] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: want NAME=AXIS:LABEL[,AXIS:LABEL] or NAME=")
        axes[name] = {}
        for part in filter(None, spec.split(",")):
            axis, colon, label = part.partition(":")
            if not colon or not axis.isdigit() or not label:
                raise click.BadParameter(f"{part!r} in {value!r}: want AXIS:LABEL, like 0:batch")
            axes[name][int(axis)] = label
    return axes


@click.command(epilog=_DETAILS)
@click.argument("source")
@click.option(
    "--out",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the .onnx file to write",
)
@click.option(
    "--framework",
    type=click.Choice(FRAMEWORKS),
    default="auto",
    show_default=True,
    help="the source's framework (auto: from the loaded object)",
)
@click.option(
    "--task",
    type=click.Choice(tuple(TASKS)),
    default=DEFAULT_TASK,
    show_default=True,
    help="a transformers checkpoint's task: which head, which output",
)
@click.option(
    "--inputs",
    metavar="NAME,NAME",
    help="a transformers checkpoint: the tokenizer inputs the model takes (default: all of them); "
    "leaving out token_type_ids keeps the model's default, all zeros (one segment)",
)
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="input rows for the parity check (.npz)",
)
@click.option(
    "--rows",
    type=click.IntRange(2),
    default=DEFAULT_ROWS,
    show_default=True,
    help="random rows for the parity check when --sample is not given",
)
@click.option(
    "--opset", type=click.IntRange(9), default=DEFAULT_OPSET, show_default=True, help="ONNX opset"
)
@click.option(
    "--dynamic-axes",
    "dynamic_axes",
    multiple=True,
    metavar="NAME=AXIS:LABEL,...",
    help="PyTorch: one input's dynamic axes, replacing the default (repeatable; NAME= is static)",
)
@click.option(
    "--external-data",
    type=click.Choice(("auto", "always", "never")),
    default="auto",
    show_default=True,
    help="weights in MODEL.onnx.data beside the graph (auto: past 1.5 GB, as protobuf "
    "cannot hold 2 GB in one file)",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="read a .joblib/.pkl source (it runs any code it names: only files you made)",
)
@click.option(
    "--max-abs-error",
    type=float,
    default=MAX_ABS_ERROR,
    show_default=True,
    help="a float output passes at or below this largest absolute difference...",
)
@click.option(
    "--min-cosine",
    type=float,
    default=MIN_COSINE,
    show_default=True,
    help="...or at or above this minimum cosine",
)
def convert(
    source: str,
    target: Path,
    framework: str,
    task: str,
    inputs: str | None,
    sample: Path | None,
    rows: int,
    opset: int,
    dynamic_axes: tuple[str, ...],
    external_data: str,
    allow_pickle: bool,
    max_abs_error: float,
    min_cosine: float,
) -> None:
    """Convert a framework model to ONNX, checked against the framework on the same inputs."""
    report = convert_model(
        source,
        target,
        framework=framework,
        task=task,
        inputs=[n.strip() for n in inputs.split(",") if n.strip()] if inputs else None,
        sample=sample,
        rows=rows,
        opset=opset,
        axes=_parse_axes(dynamic_axes),
        external={"auto": None, "always": True, "never": False}[external_data],
        allow_pickle=allow_pickle,
        tolerance=Tolerance(min_cosine=min_cosine, max_abs_error=max_abs_error),
    )
    for output in report.parity.outputs:
        if output.kind == "label":
            detail = f"labels identical {output.agreement:.2%}"
        else:
            detail = f"max abs error {output.max_abs_error:.3g}, min cosine {output.cosine_min:.6f}"
            if output.top1_agreement is not None:
                detail += f", top-1 identical {output.top1_agreement:.2%}"
        click.echo(f"parity {output.name}: {detail} over {report.parity.rows} rows")
    click.echo(f"wrote {target} ({report.framework}, opset {report.opset})")
    click.echo(f"report: {report_path(target)}")
