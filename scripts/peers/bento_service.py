"""BentoML serving the same ONNX model: a 1.x ``@bentoml.service`` with onnxruntime inside.

The service loads one ``onnxruntime.InferenceSession`` (default options) when its worker
starts and exposes ``POST /predict``. Its one parameter is named ``inputs``, so BentoML takes
the same Open Inference Protocol v2 JSON body that onnxkit's ``/invocations`` and the Flask
peer take (``{"inputs": [{"name", "shape", "datatype", "data"}]}``) and answers
``{"outputs": [...]}`` in the same form. Everything else is BentoML's default: one worker,
its own thread pool for a sync API, uvicorn underneath.

Run (what ``scripts/bench_endpoint.py`` does, in its own venv)::

    BENCH_MODEL_PATH=/path/model.onnx bentoml serve bento_service:OnnxService \\
        --host 127.0.0.1 --port 3000 --working-dir scripts/peers
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np

DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
DATATYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


@bentoml.service(workers=1)
class OnnxService:
    """One ONNX model behind ``POST /predict``."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(os.environ["BENCH_MODEL_PATH"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    @bentoml.api
    def predict(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Decode the v2 tensors, run the model, return every output."""
        feed = {
            tensor["name"]: np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(
                tensor["shape"]
            )
            for tensor in inputs
        }
        results = self.session.run(self.output_names, feed)
        return {
            "outputs": [
                {
                    "name": name,
                    "datatype": DATATYPES[result.dtype],
                    "shape": list(result.shape),
                    "data": result.ravel().tolist(),
                }
                for name, result in zip(self.output_names, results, strict=True)
            ]
        }
