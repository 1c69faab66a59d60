"""The tutorial baseline: a Flask app that loads the ONNX model once and serves ``POST /predict``.

Written the way most "serve your model with Flask" tutorials do it: one module-level
``onnxruntime.InferenceSession`` with default options, a JSON body in, ``jsonify`` out, no
batching, no limits, no error mapping. The body is the same Open Inference Protocol v2 JSON
that onnxkit's ``/invocations`` takes (``{"inputs": [{"name", "shape", "datatype", "data"}]}``),
so the benchmark sends identical bytes to every server, and the reply has the same
``{"outputs": [{"name", "datatype", "shape", "data"}]}`` form.

Run (what ``scripts/bench_endpoint.py`` does, in its own venv)::

    BENCH_MODEL_PATH=/path/model.onnx flask --app flask_app run --host 127.0.0.1 --port 5000
    BENCH_MODEL_PATH=/path/model.onnx gunicorn -b 127.0.0.1:5000 -w 2 --threads 4 flask_app:app
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
DATATYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}

app = Flask(__name__)
session = ort.InferenceSession(os.environ["BENCH_MODEL_PATH"])  # once, at import
output_names = [output.name for output in session.get_outputs()]


@app.post("/predict")
def predict() -> Any:
    """Decode the v2 tensors, run the model, return every output as JSON."""
    body = request.get_json()
    feed = {
        tensor["name"]: np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(
            tensor["shape"]
        )
        for tensor in body["inputs"]
    }
    results = session.run(output_names, feed)
    return jsonify(
        outputs=[
            {
                "name": name,
                "datatype": DATATYPES[result.dtype],
                "shape": list(result.shape),
                "data": result.ravel().tolist(),
            }
            for name, result in zip(output_names, results, strict=True)
        ]
    )
