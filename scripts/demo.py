"""The whole path on this machine: model -> quantize -> publish to local S3 -> start-api -> predict
-> what serving it costs.

Run through `make demo`. Every step is a real `onnxkit` command, echoed exactly as it runs (after
the `export` line it echoes first), so you can paste each one from the repository root; everything
started here is stopped at the end, whatever happens.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from onnxkit_tools.local.walkthrough import Walkthrough
from onnxkit_tools.net import free_port

REPO = Path(__file__).resolve().parents[1]
WORK = Path(".onnxkit") / "demo"  # relative: the echoed commands run from the repo root
STORE = "s3://onnxkit-local/onnxkit"


def main() -> int:
    s3_port, api_port = free_port(4566), free_port(3000)
    with Walkthrough.on_local_s3(REPO, s3_port) as walk:
        return walk.guarded("demo", lambda: _walk(walk, walk.endpoint, api_port, s3_port))


def _walk(walk: Walkthrough, endpoint: str, api_port: int, s3_port: int) -> int:
    walk.step("0/6 the environment of every command below (fake credentials, S3 on loopback)")
    walk.echo_exports()
    walk.step(
        "1/6 train an MLP on scikit-learn's digits, export ONNX, quantize to int8, score both"
    )
    walk.run("examples", "build", "digits", "--out", str(WORK / "digits"))

    walk.step(f"2/6 start S3 locally (moto on {endpoint})")
    s3 = walk.start("local", "s3", "--port", str(s3_port))
    walk.wait_ready(f"{endpoint}/moto-api/", s3)

    walk.step("3/6 publish the int8 model as a new version and point `prod` at it")
    walk.run(
        "publish",
        str(WORK / "digits" / "int8" / "model.onnx"),
        "--name",
        "digits",
        "--alias",
        "prod",
        "--report",
        str(WORK / "digits" / "report.json"),
        "--preprocess",
        str(WORK / "digits" / "image.json"),
        "--labels",
        str(WORK / "digits" / "labels.txt"),
        "--top-k",
        "3",
        "--store",
        STORE,
    )

    walk.step(f"4/6 serve it: the function under the Lambda emulator, local API on :{api_port}")
    api = walk.start("local", "start-api", "--port", str(api_port))
    base = f"http://127.0.0.1:{api_port}"
    walk.wait_ready(f"{base}/v2/health/ready", api)

    walk.step("5/6 a real prediction: a held-out handwritten digit")
    validation = np.load(REPO / WORK / "digits" / "validation.npz")
    row, label = validation["input"][0], int(validation["label"][0])
    body = json.dumps(
        {
            "id": f"demo-true-label-{label}",
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
            ],
        }
    )
    url = f"{base}/v2/models/digits/infer"
    print(f"$ curl -s -X POST {url} -H 'Content-Type: application/json' -d '{body}'", flush=True)
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer = json.loads(reply.read())
    elapsed = (time.perf_counter() - started) * 1000
    print(json.dumps(answer))
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    predicted = outputs["label"][0]
    confidence = max(outputs["probabilities"])
    print(
        f"\nprediction: {predicted} (true label {label}, p={confidence:.4f}), "
        f"model digits v{answer['model_version']}, {elapsed:.1f} ms over HTTP"
    )
    (image,) = (REPO / WORK / "digits" / "images").glob("000-label-*.png")
    print(
        f"\nthe same digit as a PNG file:\n$ curl -s -X POST {url} "
        f"-H 'Content-Type: image/png' --data-binary @{image.relative_to(REPO)}",
        flush=True,
    )
    request = urllib.request.Request(
        url, data=image.read_bytes(), headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        from_image = json.loads(reply.read())
    image_outputs = {o["name"]: o["data"] for o in from_image["outputs"]}
    print(json.dumps(image_outputs))
    print(
        f"prediction from the image: {image_outputs['label'][0]} "
        f"(top 3 labels {', '.join(image_outputs['top_labels'])})"
    )
    print(
        f"\nthe servers stop now (before the benchmark); to keep them, run steps 2 and 4 "
        f"yourself (after the export line), or just `{walk.shown} local start-api`: it starts its "
        "own S3 with the default digits model"
    )
    walk.stop(api)
    walk.stop(s3)

    walk.step("6/6 what it costs: latency per vCPU share, Lambda per MemorySize, SageMaker")
    walk.run(
        "bench",
        str(WORK / "digits" / "int8" / "model.onnx"),
        "--out",
        str(WORK / "digits" / "bench"),
        "--seconds",
        "0.5",
    )
    return 0 if predicted == label == image_outputs["label"][0] else 1


if __name__ == "__main__":
    sys.exit(main())
