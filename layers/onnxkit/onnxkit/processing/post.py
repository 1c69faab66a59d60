"""Scores out: softmax or L2 normalization of one model output, and its top-k with labels.

The declaration (:class:`PostSpec`) is data from the manifest; the labels file is one of the
version's verified files. Top-k adds outputs beside the model's own (``top_indices``,
``top_scores``, ``top_labels`` by default); :meth:`PostSpec.derived` describes them for the
model's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnxkit.datatypes import BY_NAME
from onnxkit.errors import InferenceError
from onnxkit.manifest import TensorSpec, safe_relative

if TYPE_CHECKING:  # numpy is imported by the processor, not with the declarations
    import numpy as np


@dataclass(frozen=True)
class PostSpec:
    """What is done to one model output after the model runs.

    Attributes:
        output: The model output it applies to.
        softmax: Replace the output by its softmax over the last axis.
        l2_normalize: Replace the output by itself over its L2 norm on the last axis (rows of
            zeros stay zeros). Not with ``softmax``.
        top_k: How many of the highest scores to add as outputs; 0 adds none.
        labels: A labels file's path, relative to the model version: UTF-8, one label per line,
            line ``i`` naming class ``i``. Needs ``top_k``.
        prefix: The derived outputs are ``{prefix}_indices``, ``{prefix}_scores`` and, with
            labels, ``{prefix}_labels``.
    """

    output: str
    softmax: bool = False
    l2_normalize: bool = False
    top_k: int = 0
    labels: str | None = None
    prefix: str = "top"

    def __post_init__(self) -> None:
        _check_name("output", self.output)
        _check_name("prefix", self.prefix)
        for flag in ("softmax", "l2_normalize"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{_where(self.output)} {flag} must be true or false")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise TypeError(f"{_where(self.output)} top_k must be an integer, not {self.top_k!r}")
        if self.top_k < 0:
            raise ValueError(
                f"{_where(self.output)} top_k must be 0 (none) or more, not {self.top_k}"
            )
        if self.softmax and self.l2_normalize:
            raise ValueError(f"{_where(self.output)} asks for softmax and l2_normalize: choose one")
        if self.labels is not None:
            _check_name("labels", self.labels)
            # Normalized so equal paths compare equal ("./labels.txt" is "labels.txt").
            object.__setattr__(self, "labels", safe_relative(self.labels))
            if self.top_k == 0:
                raise ValueError(
                    f"{_where(self.output)} names labels but top_k is 0: labels name top-k classes"
                )
        if not (self.softmax or self.l2_normalize or self.top_k):
            raise ValueError(
                f"{_where(self.output)} does nothing: set softmax, l2_normalize or top_k"
            )

    @property
    def files(self) -> tuple[str, ...]:
        """The version's files this declaration reads."""
        return () if self.labels is None else (self.labels,)

    @property
    def derived_names(self) -> tuple[str, ...]:
        """Names of the outputs top-k adds (none when ``top_k`` is 0)."""
        if not self.top_k:
            return ()
        names = (f"{self.prefix}_indices", f"{self.prefix}_scores")
        return (*names, f"{self.prefix}_labels") if self.labels is not None else names

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the manifest stores)."""
        return {
            "output": self.output,
            "softmax": self.softmax,
            "l2_normalize": self.l2_normalize,
            "top_k": self.top_k,
            "labels": self.labels,
            "prefix": self.prefix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostSpec:
        """Build from the JSON form, validating every field; only ``output`` is required.

        Args:
            data: The declaration's JSON object.

        Raises:
            TypeError: A field of the wrong JSON type.
            ValueError: A missing ``output``, an unknown key or a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError("a postprocessing declaration is a JSON object")
        unknown = sorted(set(data) - _POST_KEYS)
        if unknown:
            raise ValueError(
                f"unknown postprocessing key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(_POST_KEYS))}"
            )
        if "output" not in data:
            raise ValueError("a postprocessing declaration names its model 'output'")
        return cls(**data)

    def derived(self, spec: TensorSpec) -> tuple[TensorSpec, ...]:
        """Check the model output and describe the outputs this declaration adds.

        Args:
            spec: The model output's signature (``spec.name == self.output``).

        Returns:
            ``{prefix}_indices`` INT64 ``[N, k]``, ``{prefix}_scores`` (the output's datatype)
            ``[N, k]`` and, with labels, ``{prefix}_labels`` BYTES ``[N, k]``; nothing when
            ``top_k`` is 0.

        Raises:
            ValueError: The output is not floating point; or, with top-k, it is not 2-D, has
                fewer than ``top_k`` classes, or a derived name is the output's own.
        """
        datatype = BY_NAME.get(spec.datatype)
        if datatype is None or not datatype.is_float:
            raise ValueError(
                f"{_where(self.output)}: the output is {spec.datatype}, not floating point scores"
            )
        if not self.top_k:
            return ()
        if len(spec.shape) != 2:
            raise ValueError(
                f"{_where(self.output)}: top_k needs a 2-D output [batch, classes], "
                f"not shape {list(spec.shape)}"
            )
        classes = spec.shape[1]
        if classes >= 0 and self.top_k > classes:
            raise ValueError(
                f"{_where(self.output)}: top_k {self.top_k} is more than its {classes} classes"
            )
        if spec.name in self.derived_names:
            raise ValueError(
                f"{_where(self.output)}: a derived output would also be named {spec.name!r}"
            )
        shape = (spec.shape[0], self.top_k)
        datatypes = ("INT64", spec.datatype, "BYTES")
        return tuple(
            TensorSpec(name, dtype, shape)
            for name, dtype in zip(self.derived_names, datatypes, strict=False)
        )


_POST_KEYS = frozenset(PostSpec.__dataclass_fields__)


class PostProcessor:
    """Applies one :class:`PostSpec` to a model's outputs."""

    def __init__(self, spec: PostSpec, labels: bytes | None) -> None:
        """Read the labels file, if the declaration names one.

        A label is its line as written, less a final ``\\r``; one newline may end the file, and
        a UTF-8 byte order mark may start it.

        Args:
            spec: The declaration.
            labels: The verified bytes of the file ``spec.labels``; None without one.

        Raises:
            ValueError: Labels given without a declared file or missing for one, not UTF-8,
                empty, or with a blank line.
        """
        self.spec = spec
        self._labels: np.ndarray | None = None
        if spec.labels is None:
            if labels is not None:
                raise ValueError(
                    f"{_where(spec.output)} declares no labels file, yet labels were given"
                )
            return
        if labels is None:
            raise ValueError(
                f"{_where(spec.output)} declares labels {spec.labels!r}; none were given"
            )
        self._labels = _read_labels(spec.labels, labels)

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels, class 0 first (empty without a labels file)."""
        if self._labels is None:
            return ()
        return tuple(label.decode("utf-8") for label in self._labels)

    def check_classes(self, count: int) -> None:
        """Check the labels file names exactly ``count`` classes (nothing to check without one).

        Args:
            count: The model output's last dimension, when the signature fixes it.

        Raises:
            ValueError: The file has another number of labels.
        """
        if self._labels is not None and len(self._labels) != count:
            raise ValueError(
                f"{self.spec.labels} has {len(self._labels)} labels but output "
                f"{self.spec.output!r} has {count} classes: one label per class"
            )

    def apply(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Transform the declared output and add the top-k outputs.

        Args:
            outputs: The model's outputs by name; not modified.

        Returns:
            A new dict: the declared output transformed (in its own dtype) and the derived
            outputs added. Ties in top-k keep the lower index first; labels are an object array
            of UTF-8 ``bytes``. Without the declared output, a copy of ``outputs``.

        Raises:
            InferenceError: The output is not floating point, not 2-D or has fewer classes than
                ``top_k`` (with top-k), or has another number of classes than there are labels.
        """
        import numpy as np

        result = dict(outputs)
        if self.spec.output not in outputs:
            return result
        array = np.asarray(outputs[self.spec.output])
        if array.dtype.kind != "f" or array.ndim == 0:
            raise InferenceError(
                f"{_where(self.spec.output)}: the model returned {array.dtype} values of shape "
                f"{list(array.shape)}, not float scores over a last axis"
            )
        if self.spec.softmax:
            array = _softmax(array)
        elif self.spec.l2_normalize:
            array = _l2_normalize(array)
        result[self.spec.output] = array
        if self.spec.top_k:
            result.update(self._top_k(array))
        return result

    def _top_k(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        import numpy as np

        spec = self.spec
        if scores.ndim != 2 or scores.shape[1] < spec.top_k:
            raise InferenceError(
                f"{_where(spec.output)}: the model returned shape {list(scores.shape)}; top_k "
                f"{spec.top_k} needs [batch, classes] with at least {spec.top_k} classes"
            )
        # A stable sort of the negated scores puts the highest first and keeps tied classes
        # in index order; argpartition would pick arbitrarily among ties at the k-th place.
        indices = np.argsort(-scores, axis=-1, kind="stable")[:, : spec.top_k].astype(np.int64)
        derived = {
            f"{spec.prefix}_indices": indices,
            f"{spec.prefix}_scores": np.take_along_axis(scores, indices, axis=-1),
        }
        if self._labels is not None:
            if len(self._labels) != scores.shape[1]:
                raise InferenceError(
                    f"{spec.labels} has {len(self._labels)} labels but the model returned "
                    f"{scores.shape[1]} classes for {spec.output!r}: the version's labels file "
                    "does not match its model"
                )
            derived[f"{spec.prefix}_labels"] = self._labels[indices]
        return derived


def _where(output: str) -> str:
    return f"postprocessing of {output!r}"


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"postprocessing {what} must be a string, not {value!r}")
    if not value:
        raise ValueError(f"postprocessing {what} must not be empty")


def _read_labels(path: str, raw: bytes) -> np.ndarray:
    import numpy as np

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels file {path} is not valid UTF-8") from exc
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"labels file {path} is empty: write one label per line")
    # Split on "\n" alone: str.splitlines would also split inside a label at \x1c, \u2028...
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(
                f"labels file {path}: line {number} is blank; every class needs a label"
            )
    labels = np.empty(len(lines), dtype=object)
    labels[:] = [line.encode("utf-8") for line in lines]
    return labels


def _softmax(array: np.ndarray) -> np.ndarray:
    import numpy as np

    # float64 throughout, and the row's max subtracted, so exp never overflows.
    wide = array.astype(np.float64)
    wide -= wide.max(axis=-1, keepdims=True, initial=-np.inf)
    np.exp(wide, out=wide)
    wide /= wide.sum(axis=-1, keepdims=True)
    return wide.astype(array.dtype)


def _l2_normalize(array: np.ndarray) -> np.ndarray:
    import numpy as np

    wide = array.astype(np.float64)
    # Scaled by the row's largest magnitude first, so squaring neither overflows nor underflows.
    scale = np.abs(wide).max(axis=-1, keepdims=True, initial=0.0)
    np.divide(wide, scale, out=wide, where=scale > 0)
    norm = np.sqrt(np.square(wide).sum(axis=-1, keepdims=True))
    normalized = np.zeros_like(wide)
    np.divide(wide, norm, out=normalized, where=norm > 0)
    return normalized.astype(array.dtype)
