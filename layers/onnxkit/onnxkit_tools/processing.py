"""Processing declarations from command options: a tokenizer, an image preprocessing, labels.

``onnxkit publish --tokenizer tokenizer.json --labels labels.txt --preprocess image.json``
becomes a :class:`~onnxkit.processing.Processing` checked against the model's signature, and the
files it names, stored beside the graph under fixed names and verified like it.
``onnxkit quantize`` builds the input half of the same declaration from the same options
(:func:`declare_inputs`) to turn sentences and images into the gate's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxkit.datatypes import BY_NAME
from onnxkit.errors import InvalidInputError
from onnxkit.manifest import Manifest, TensorSpec
from onnxkit.processing import Processing
from onnxkit.processing.image import ImageSpec
from onnxkit.processing.post import PostSpec
from onnxkit.processing.text import TextSpec

TOKENIZER_FIELDS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.txt"


class ProcessingOptionError(InvalidInputError):
    """Publish options that do not describe processing this model can have."""

    code = "invalid_processing"


@dataclass(frozen=True)
class ProcessingOptions:
    """What ``onnxkit publish`` was asked to declare.

    Attributes:
        tokenizer: A Hugging Face ``tokenizer.json``.
        text_input: The public input sentences are sent to.
        max_length: Tokens per sentence (special tokens included).
        truncation: Cut longer sentences (False: refuse them, 400).
        padding: ``longest`` or ``max_length``.
        preprocess: A JSON file with the image declaration (:class:`ImageSpec` fields).
        labels: A labels file, one label per line, in the order of the output's classes.
        top_k: How many classes the answer lists (with labels: default 5, at most the classes).
        softmax: Turn the output's scores into probabilities first.
        output: The output postprocessing reads (default: the only 2-D float output).
        l2_normalize: Outputs to divide by their L2 norm (embeddings).
    """

    tokenizer: Path | None = None
    text_input: str = "text"
    max_length: int = 128
    truncation: bool = True
    padding: str = "longest"
    preprocess: Path | None = None
    labels: Path | None = None
    top_k: int | None = None
    softmax: bool = False
    output: str | None = None
    l2_normalize: tuple[str, ...] = field(default=())

    @property
    def wanted(self) -> bool:
        """Whether any processing was asked for."""
        return bool(
            self.tokenizer or self.preprocess or self.labels or self.top_k or self.softmax
        ) or bool(self.l2_normalize)


def declare_processing(
    options: ProcessingOptions, manifest: Manifest
) -> tuple[Processing, dict[str, Path]] | None:
    """The declaration the options describe for this model, and the files it names.

    Returns:
        None when no processing was asked for; else the declaration (checked against the
        signature, its files loaded once to prove they hold what they should) and a map from
        each stored file name to the local file.

    Raises:
        ProcessingOptionError: The options do not fit the model, or a file is not what it
            should be (not a tokenizer, a labels file with the wrong number of lines).
    """
    if not options.wanted:
        return None
    files: dict[str, Path] = {}
    text = text_spec(options, manifest.inputs) if options.tokenizer is not None else None
    if options.tokenizer is not None:
        files[TOKENIZER_FILE] = options.tokenizer
    image = image_spec(options.preprocess, manifest.inputs) if options.preprocess else None
    post = []
    for name in options.l2_normalize:
        post.append(PostSpec(output=name, l2_normalize=True))
    if options.labels or options.top_k or options.softmax:
        post.append(_classes_spec(options, manifest.outputs))
        if options.labels is not None:
            files[LABELS_FILE] = options.labels
    try:
        processing = Processing(text=text, image=image, post=tuple(post))
        processing.check(manifest.inputs, manifest.outputs)
    except (ValueError, TypeError) as exc:
        raise ProcessingOptionError(str(exc)) from exc
    _load_once(processing, manifest, files)
    return processing, files


def declare_inputs(
    options: ProcessingOptions,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...] = (),
) -> Processing:
    """The input half of what :func:`declare_processing` declares: the tokenizer and the image
    preprocessing (no postprocessing), checked against the model's inputs.

    ``onnxkit quantize`` turns its sentences and images into model inputs with this, so the gate
    measures the model behind the processing ``onnxkit publish`` records from the same options.

    Raises:
        ProcessingOptionError: The options do not fit the model's inputs.
    """
    text = text_spec(options, inputs) if options.tokenizer is not None else None
    image = image_spec(options.preprocess, inputs) if options.preprocess else None
    try:
        processing = Processing(text=text, image=image)
        processing.check(inputs, outputs)
    except (ValueError, TypeError) as exc:
        raise ProcessingOptionError(str(exc)) from exc
    return processing


def read_labels(path: Path) -> tuple[str, ...]:
    """The labels of a ``--labels`` file, class 0 first, read as the function reads them.

    Raises:
        ProcessingOptionError: The file cannot be read, is empty, has a blank line or is not
            UTF-8.
    """
    from onnxkit.processing.post import PostProcessor

    # The file is read by the postprocessing that serves it (one label per line, none blank).
    spec = PostSpec(output="scores", top_k=1, labels=LABELS_FILE)
    try:
        return PostProcessor(spec, path.read_bytes()).labels
    except (OSError, ValueError) as exc:
        raise ProcessingOptionError(f"--labels {path}: {exc}") from exc


def text_spec(options: ProcessingOptions, inputs: tuple[TensorSpec, ...]) -> TextSpec:
    """The text declaration of the tokenizer options: it feeds the model inputs named like its
    fields (BERT's names).

    Raises:
        ProcessingOptionError: The model has no ``input_ids`` input, or an option is invalid.
    """
    names = {spec.name for spec in inputs}
    feeds = {field_name: field_name for field_name in TOKENIZER_FIELDS if field_name in names}
    if "input_ids" not in feeds:
        raise ProcessingOptionError(
            "--tokenizer needs a model input named input_ids (and attention_mask, "
            f"token_type_ids where the model takes them); this model takes {', '.join(names)}"
        )
    try:
        return TextSpec.from_dict(
            {
                "input": options.text_input,
                "tokenizer": TOKENIZER_FILE,
                "max_length": options.max_length,
                "truncation": options.truncation,
                "padding": options.padding,
                "feeds": feeds,
            }
        )
    except (ValueError, TypeError) as exc:
        raise ProcessingOptionError(f"--tokenizer: {exc}") from exc


def image_spec(path: Path, inputs: tuple[TensorSpec, ...]) -> ImageSpec:
    """The image declaration of a JSON file; ``feeds`` defaults to the model's only input.

    Raises:
        ProcessingOptionError: The file is not a JSON object, or not a valid declaration for
            this model's inputs.
    """
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProcessingOptionError(
            f"--preprocess {path}: not a readable JSON file ({exc})"
        ) from exc
    if not isinstance(data, dict):
        raise ProcessingOptionError(f"--preprocess {path}: the file must hold a JSON object")
    if "feeds" not in data:
        if len(inputs) != 1:
            raise ProcessingOptionError(
                f"--preprocess {path}: the model has {len(inputs)} inputs; say which one the "
                'pixels feed with "feeds"'
            )
        data = {**data, "feeds": inputs[0].name}
    try:
        return ImageSpec.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ProcessingOptionError(f"--preprocess {path}: {exc}") from exc


def _classes_spec(options: ProcessingOptions, outputs: tuple[TensorSpec, ...]) -> PostSpec:
    """Top-k (with labels, softmax) on the named output, or the only 2-D float output."""
    if options.output is not None:
        name = options.output
    else:
        scores = [
            spec.name
            for spec in outputs
            if len(spec.shape) == 2 and BY_NAME[spec.datatype].is_float
        ]
        if len(scores) != 1:
            raise ProcessingOptionError(
                "say which output holds the class scores with --output (the model's outputs: "
                + ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in outputs)
                + ")"
            )
        name = scores[0]
    classes = next((spec.shape[-1] for spec in outputs if spec.name == name), -1)
    top_k = options.top_k or (min(5, classes) if classes > 0 else 5)
    try:
        return PostSpec(
            output=name,
            softmax=options.softmax,
            top_k=top_k,
            labels=LABELS_FILE if options.labels else None,
        )
    except (ValueError, TypeError) as exc:
        raise ProcessingOptionError(str(exc)) from exc


def _load_once(processing: Processing, manifest: Manifest, files: dict[str, Path]) -> None:
    """Load the declaration as the function will, so a bad file fails here, not in production."""
    from dataclasses import replace

    from onnxkit.processing import Pipeline

    described = replace(manifest, processing=processing.to_dict())
    try:
        Pipeline(described, lambda path: files[path].read_bytes())
    except (ValueError, OSError) as exc:
        raise ProcessingOptionError(f"the processing files cannot be used: {exc}") from exc
