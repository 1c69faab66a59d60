"""The article's own case: a Keras regression trained on data generated here, saved as a
TensorFlow SavedModel (the model the article serves from Flask), then brought to onnxkit with
``onnxkit convert``.

The data are house prices (in thousands) from four features through a known formula plus
noise, so the fit can be judged against the noise it cannot learn. The model normalizes its
own inputs (a Normalization layer adapted on the training split): clients send raw features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

KERAS_INPUT = "features"  # the Input layer's name: the SavedModel's and the ONNX model's input
KERAS_OUTPUT = "output_0"  # what model.export() names the serving signature's output
FEATURES = ("area_m2", "rooms", "age_years", "distance_km")
ROWS = 4000
NOISE = 10.0  # the price noise's standard deviation: the error no model can go below
EPOCHS = 40
CALIBRATION_ROWS = 256
SEED = 0


def generate(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` houses (float32, one column per :data:`FEATURES`) and their prices."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 250, rows)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 1, rows)), 1, 9)
    age = rng.uniform(0, 80, rows)
    distance = rng.gamma(2.0, 4.0, rows)
    price = (
        40 + 2.0 * area + 15 * rooms - 0.8 * age - 25 * np.log1p(distance)
        + rng.normal(0, NOISE, rows)
    )  # fmt: skip
    features = np.stack([area, rooms, age, distance], axis=1).astype(np.float32)
    return features, price.astype(np.float32)


def build_keras_regression(out: Path, *, seed: int = SEED) -> dict[str, Any]:
    """Train the regression and save it as a SavedModel with its data.

    Writes ``out/saved_model/`` (``model.export``: a ``serving_default`` signature taking
    ``features``, rows x 4 float32, answering ``output_0``), ``out/calibration.npz`` (training
    rows), ``out/validation.npz`` (the held-out rows, ``features``), ``out/validation_price.npy``
    (their prices) and ``out/report.json``.

    Returns:
        The report: mean absolute error and R² on the held-out rows, next to predicting the
        training mean and to the noise in the data.

    Raises:
        ImportError: TensorFlow and Keras are not installed (the convert-tensorflow extra).
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    features, price = generate(ROWS, seed)
    split = ROWS * 3 // 4
    x_train, y_train = features[:split], price[:split]
    x_val, y_val = features[split:], price[split:]
    normalize = keras.layers.Normalization()
    normalize.adapt(x_train)
    model = keras.Sequential(
        [
            keras.Input((len(FEATURES),), name=KERAS_INPUT),
            normalize,
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.export(str(out / "saved_model"), verbose=False)
    calibration: dict[str, Any] = {KERAS_INPUT: x_train[:CALIBRATION_ROWS]}
    validation: dict[str, Any] = {KERAS_INPUT: x_val}
    np.savez(out / "calibration.npz", **calibration)
    np.savez(out / "validation.npz", **validation)
    np.save(out / "validation_price.npy", y_val)
    predicted = model.predict(x_val, verbose=0).ravel()
    residual = ((y_val - predicted) ** 2).sum()
    spread = ((y_val - y_val.mean()) ** 2).sum()
    report = {
        "model": "keras-regression",
        "features": list(FEATURES),
        "rows": {"train": split, "validation": ROWS - split},
        "validation": {
            "mae": float(np.abs(y_val - predicted).mean()),
            "r2": float(1 - residual / spread),
            "mae_of_the_training_mean": float(np.abs(y_val - y_train.mean()).mean()),
            "mae_of_the_noise": float(NOISE * np.sqrt(2 / np.pi)),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
