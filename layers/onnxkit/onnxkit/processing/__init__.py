"""Processing declared with a model and versioned with it: text, images in; labels, scores out.

Declarations are data only (a manifest's ``processing`` object); the files they name (a
tokenizer, a labels file) are listed in the manifest with their sha256 and verified like the
model. Nothing executable ever comes from an artifact.

A :class:`Pipeline` is one version's processing, loaded: it turns the public inputs clients send
(``BYTES`` sentences or encoded images, or a bare ``text/plain`` / ``image/*`` body) into the
model's tensors, and the model's outputs into what the declarations add (probabilities, top-k
labels, normalized embeddings). A request may still send the model's own tensors instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onnxkit.datatypes import BY_NAME
from onnxkit.errors import InvalidInputError, UnsupportedMediaTypeError
from onnxkit.manifest import TensorSpec
from onnxkit.processing.image import ImageSpec
from onnxkit.processing.post import PostSpec
from onnxkit.processing.text import TextSpec

if TYPE_CHECKING:
    import numpy as np

    from onnxkit.manifest import Manifest

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
"""A tokenizer.json past this is refused from its manifest entry, before a byte is fetched
(large multilingual tokenizers are 10-30 MB; the tokenizers library holds several copies)."""
MAX_LABELS_BYTES = 4 * 1024 * 1024
"""A labels file past this is refused the same way (ImageNet-21k's 21,843 labels: ~0.4 MB)."""

TEXT_MEDIA_TYPES = ("text/plain",)
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg")
_KEYS = ("text", "image", "postprocess")


@dataclass(frozen=True)
class Processing:
    """One version's declarations: a tokenizer, an image preprocessing, postprocessing steps.

    Attributes:
        text: Sentences in (a ``BYTES`` input) -> the tokenizer's tensors.
        image: Encoded images in (a ``BYTES`` input) -> one pixel tensor.
        post: Steps applied to model outputs (softmax, L2 normalization, top-k with labels).
    """

    text: TextSpec | None = None
    image: ImageSpec | None = None
    post: tuple[PostSpec, ...] = field(default=())

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the declarations name, in order."""
        named = [*(self.text.files if self.text else ()), *(self.image.files if self.image else ())]
        for step in self.post:
            named.extend(step.files)
        return tuple(dict.fromkeys(named))

    def file_limits(self) -> dict[str, int]:
        """The most bytes each named file may have (checked against the manifest's sizes)."""
        limits = {path: MAX_LABELS_BYTES for step in self.post for path in step.files}
        if self.text is not None:
            limits.update(dict.fromkeys(self.text.files, MAX_TOKENIZER_BYTES))
        return limits

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (absent parts left out)."""
        data: dict[str, Any] = {}
        if self.text is not None:
            data["text"] = self.text.to_dict()
        if self.image is not None:
            data["image"] = self.image.to_dict()
        if self.post:
            data["postprocess"] = [step.to_dict() for step in self.post]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Processing:
        """Parse and validate the JSON form.

        Raises:
            ValueError, TypeError: A malformed or unknown declaration.
        """
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(
                f"unknown processing part(s) {', '.join(map(repr, unknown))}; "
                f"the parts are {', '.join(_KEYS)}"
            )
        post = data.get("postprocess") or []
        if not isinstance(post, list):
            raise TypeError("processing.postprocess must be a list of steps")
        return cls(
            text=TextSpec.from_dict(data["text"]) if data.get("text") is not None else None,
            image=ImageSpec.from_dict(data["image"]) if data.get("image") is not None else None,
            post=tuple(PostSpec.from_dict(step) for step in post),
        )

    @property
    def public_inputs(self) -> tuple[TensorSpec, ...]:
        """The ``BYTES`` inputs clients send to (one sentence or one encoded image per row)."""
        return tuple(
            TensorSpec(part.input, "BYTES", (-1,)) for part in (self.text, self.image) if part
        )

    def fed(self) -> dict[str, str]:
        """Model input -> the public input whose processing produces it."""
        feeds: dict[str, str] = {}
        if self.text is not None:
            feeds.update(dict.fromkeys(dict(self.text.feeds).values(), self.text.input))
        if self.image is not None:
            feeds[self.image.feeds] = self.image.input
        return feeds

    def check(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        """Check the declarations against the model's signature.

        Raises:
            ValueError: A feed or an output the model does not have, a clash of names, or a
                declaration that disagrees with the tensor it feeds or reads.
        """
        by_input = {spec.name: spec for spec in inputs}
        by_output = {spec.name: spec for spec in outputs}
        for model_input in self.fed():
            if model_input not in by_input:
                raise ValueError(
                    f"processing feeds {model_input!r}, which is not one of the model's inputs "
                    f"({', '.join(by_input)})"
                )
        if self.text and self.image and set(dict(self.text.feeds).values()) & {self.image.feeds}:
            raise ValueError("the tokenizer and the image preprocessing feed the same input")
        if self.image is not None:
            self.image.check_input(by_input[self.image.feeds])
        if self.text is not None:
            for model_input in dict(self.text.feeds).values():
                if not BY_NAME[by_input[model_input].datatype].is_integer:
                    raise ValueError(
                        f"the tokenizer feeds {model_input!r}, which takes "
                        f"{by_input[model_input].datatype}; token ids need an integer input"
                    )
        names = set(by_input) | set(by_output)
        for spec in self.public_inputs:
            if spec.name in names:
                raise ValueError(
                    f"the processed input {spec.name!r} has the name of one of the model's "
                    "tensors; give it another name"
                )
            names.add(spec.name)
        for step in self.post:
            if step.output not in by_output:
                raise ValueError(
                    f"postprocessing reads {step.output!r}, which is not one of the model's "
                    f"outputs ({', '.join(by_output)})"
                )
            for derived in step.derived(by_output[step.output]):
                if derived.name in names:
                    raise ValueError(
                        f"postprocessing of {step.output!r} adds {derived.name!r}, a name "
                        "already taken; set another prefix"
                    )
                names.add(derived.name)


def processing_files(data: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The files a manifest's ``processing`` object names (none for None)."""
    return Processing.from_dict(data).files if data else ()


class Pipeline:
    """One version's processing, loaded: public inputs -> model tensors -> answers.

    Args:
        manifest: The version (its ``processing`` must be set).
        read: Returns a named file's verified bytes (the tokenizer, a labels file).

    Raises:
        ValueError: A file does not hold what its declaration needs (not a tokenizer, a
            labels file with the wrong number of lines).
    """

    def __init__(self, manifest: Manifest, read: Callable[[str], bytes]) -> None:
        from onnxkit.processing.image import ImageDecoder
        from onnxkit.processing.post import PostProcessor
        from onnxkit.processing.text import TextEncoder

        assert manifest.processing is not None
        self.declared = Processing.from_dict(manifest.processing)
        declared = self.declared
        self._manifest = manifest
        self._text = None
        if declared.text is not None:
            self._text = TextEncoder(declared.text, read(declared.text.tokenizer))
        self._image = ImageDecoder(declared.image) if declared.image else None
        outputs = {spec.name: spec for spec in manifest.outputs}
        self._post = []
        self._source_of: dict[str, str] = {}
        derived: list[TensorSpec] = []
        for step in declared.post:
            processor = PostProcessor(step, read(step.labels) if step.labels else None)
            classes = outputs[step.output].shape[-1]
            if classes > 0:
                processor.check_classes(classes)
            self._post.append(processor)
            for spec in step.derived(outputs[step.output]):
                self._source_of[spec.name] = step.output
                derived.append(spec)
        fed = declared.fed()
        self._public = {spec.name: spec for spec in declared.public_inputs}
        self._unfed = tuple(spec for spec in manifest.inputs if spec.name not in fed)
        self._dtypes = {spec.name: BY_NAME[spec.datatype].numpy for spec in manifest.inputs}
        self.inputs = (*declared.public_inputs, *self._unfed)
        """What a request may send instead of the model's own inputs."""
        self.outputs = (*manifest.outputs, *derived)
        """The model's outputs and those the postprocessing adds."""

    def signature_for(self, names: set[str]) -> tuple[TensorSpec, ...]:
        """The signature a request is checked against: the public one when it sends a public
        input, the model's own otherwise."""
        return self.inputs if names & set(self._public) else self._manifest.inputs

    def from_body(self, media: str, body: bytes | str) -> dict[str, np.ndarray]:
        """The public input of a bare body: one sentence (``text/plain``) or one image.

        Raises:
            UnsupportedMediaTypeError: This model declares no processing for the media type.
        """
        import numpy as np

        raw = body.encode() if isinstance(body, str) else body
        if media in TEXT_MEDIA_TYPES and self.declared.text is not None:
            return {self.declared.text.input: np.array([raw], dtype=object)}
        if media in IMAGE_MEDIA_TYPES and self.declared.image is not None:
            return {self.declared.image.input: np.array([raw], dtype=object)}
        raise UnsupportedMediaTypeError(
            f"Content-Type {media!r} is not accepted by this model; it takes "
            + ", ".join(self.accepted_media_types())
        )

    def from_list(self, items: list[Any]) -> dict[str, np.ndarray]:
        """The public text input of a bare JSON list of sentences.

        Raises:
            InvalidInputError: The list is empty or holds something other than strings.
            UnsupportedMediaTypeError: This model declares no tokenizer.
        """
        import numpy as np

        if self.declared.text is None:
            raise InvalidInputError(
                "the body must be a JSON object with an 'inputs' list (a bare list of "
                "sentences needs a model published with a tokenizer)"
            )
        if not items or not all(isinstance(item, str) for item in items):
            raise InvalidInputError("a bare JSON list must hold one or more sentences (strings)")
        return {self.declared.text.input: np.array([s.encode() for s in items], dtype=object)}

    def accepted_media_types(self) -> list[str]:
        """The media types a request body may have for this model."""
        types = ["application/json"]
        if self.declared.text is not None:
            types.append("text/plain")
        if self.declared.image is not None:
            types.extend(IMAGE_MEDIA_TYPES)
        return types

    def preprocess(
        self, inputs: dict[str, np.ndarray], *, raw_images: bool = False
    ) -> dict[str, np.ndarray]:
        """The model's tensors from a request's inputs (public ones processed, others kept).

        Args:
            inputs: The request's inputs, decoded.
            raw_images: The images are the body's own bytes (an ``image/*`` body): never read
                as base64.

        Raises:
            InvalidInputError: A sentence or an image is refused, or a model input is missing.
        """
        if not set(inputs) & set(self._public):
            return inputs
        feeds = {name: array for name, array in inputs.items() if name not in self._public}
        text, image = self.declared.text, self.declared.image
        if text is not None and self._text is not None and text.input in inputs:
            items = list(inputs[text.input].reshape(-1))
            feeds.update(self._text.encode(items, self._dtypes))
        if image is not None and self._image is not None and image.input in inputs:
            items = list(inputs[image.input].ravel())
            if not raw_images:
                items = [_image_bytes(i, item) for i, item in enumerate(items)]
            feeds[image.feeds] = self._image.decode(items)
        missing = [spec.name for spec in self._manifest.inputs if spec.name not in feeds]
        if missing:
            raise InvalidInputError(
                f"missing input(s) {', '.join(map(repr, missing))}; send "
                + " and ".join(repr(spec.name) for spec in self.inputs)
            )
        return feeds

    def model_outputs(self, requested: list[str] | None) -> list[str] | None:
        """The model outputs to run for the requested names (a derived one needs its source)."""
        if requested is None:
            return None
        return list(dict.fromkeys(self._source_of.get(name, name) for name in requested))

    def postprocess(
        self, outputs: dict[str, np.ndarray], requested: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Apply the steps; keep what was requested (everything, when nothing was named)."""
        for processor in self._post:
            outputs = processor.apply(outputs)
        if requested is None:
            return outputs
        return {name: outputs[name] for name in requested}


# What encoded images start with (PNG, JPEG, GIF, BMP, RIFF/WebP, TIFF): such bytes are an image;
# anything else in an image input is read as base64 (the one way an image fits in JSON).
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


def _image_bytes(index: int, item: Any) -> bytes:
    """An image input's element: the encoded image itself, or its base64 text.

    Binary tensors carry the image's bytes; JSON carries strings, so a JSON ``BYTES`` element
    holds the image in base64. Encoded images never start like base64 text, so the two cannot
    be confused.

    Raises:
        InvalidInputError: Neither an image nor valid base64.
    """
    import base64
    import binascii

    if not isinstance(item, bytes | bytearray):
        raise InvalidInputError(f"image #{index} must be bytes (BYTES), not {type(item).__name__}")
    raw = bytes(item)
    if not raw or raw.startswith(_IMAGE_MAGIC):
        return raw
    try:
        # line breaks are allowed (`base64` wraps its output), anything else is refused
        return base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(
            f"image #{index} is neither an encoded image nor its base64 (in JSON, send each "
            "image as a base64 string)"
        ) from exc
