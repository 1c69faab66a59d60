"""The article's case on this machine: a Keras regression trained and saved as a SavedModel ->
onnxkit convert -> quantize -> publish to local S3 -> start-api -> curl gets its prediction.

Run through `make example-keras`. Every step is a real command, echoed exactly as it runs from
the repository root (after the `export` line), so you can paste each one; everything started
here is stopped at the end, whatever happens. The served answers are written to
WORK/answer.json beside what the houses really cost.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from onnxkit_tools.local.walkthrough import Walkthrough
from onnxkit_tools.net import free_port

REPO = Path(__file__).resolve().parents[1]
STORE = "s3://onnxkit-local/onnxkit"
MODEL = "house-prices"
HOUSES = 3  # held-out rows sent in the request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".onnxkit") / "keras",
        help="folder for the model, its data and the answer (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    s3_port, api_port = free_port(4567), free_port(3001)
    with Walkthrough.on_local_s3(REPO, s3_port) as walk:
        return walk.guarded(
            "example", lambda: _walk(walk, args.work, walk.endpoint, s3_port, api_port)
        )


def _walk(walk: Walkthrough, work: Path, endpoint: str, s3_port: int, api_port: int) -> int:
    walk.step("0/7 the environment of every command below (fake credentials, S3 on loopback)")
    walk.echo_exports()
    walk.step("1/7 train a Keras regression on generated house prices, save it as a SavedModel")
    walk.run("examples", "build", "keras", "--out", str(work))

    walk.step("2/7 convert the SavedModel to ONNX, checked against TensorFlow on held-out rows")
    fp32 = work / "fp32" / "model.onnx"
    walk.run(
        "convert", str(work / "saved_model"), "--out", str(fp32),
        "--sample", str(work / "validation.npz"),
    )  # fmt: skip

    walk.step("3/7 quantize it behind the gate (int8 only if it stays as good and is not slower)")
    int8 = work / "int8" / "model.onnx"
    walk.run(
        "quantize", str(fp32), "--out", str(int8),
        "--calibration", str(work / "calibration.npz"),
        "--validation", str(work / "validation.npz"),
        "--report", str(work / "int8" / "report.json"),
    )  # fmt: skip

    walk.step(f"4/7 start S3 locally (moto on {endpoint})")
    s3 = walk.start("local", "s3", "--port", str(s3_port))
    walk.wait_ready(f"{endpoint}/moto-api/", s3)

    walk.step("5/7 publish it with both reports (quantization, conversion); point `prod` at it")
    walk.run(
        "publish", str(int8), "--name", MODEL, "--alias", "prod",
        "--report", str(work / "int8" / "report.json"),
        "--report", str(fp32.with_name("model.conversion.json")),
        "--store", STORE,
    )  # fmt: skip

    walk.step(f"6/7 serve it: the function under the Lambda emulator, local API on :{api_port}")
    walk.export(ONNXKIT_MODEL_NAME=MODEL)
    api = walk.start("local", "start-api", "--port", str(api_port))
    base = f"http://127.0.0.1:{api_port}"
    walk.wait_ready(f"{base}/v2/health/ready", api)

    walk.step(f"7/7 curl gets its prediction: {HOUSES} held-out houses")
    rows = np.load(REPO / work / "validation.npz")["features"][:HOUSES]
    prices = np.load(REPO / work / "validation_price.npy")[:HOUSES]
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": [round(float(v), 3) for v in rows.ravel()],
                }
            ]
        }
    )
    url = f"{base}/v2/models/{MODEL}/infer"
    command = ["curl", "-s", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", body]
    print("$ " + shlex.join(command), flush=True)
    answer = json.loads(_post(command, url, body))
    print(json.dumps(answer))
    if "outputs" not in answer:
        return 1
    (output,) = [o for o in answer["outputs"] if o["name"] == "output_0"]
    predicted = np.asarray(output["data"], dtype=np.float64).reshape(HOUSES)
    for house, (guess, price) in enumerate(zip(predicted, prices, strict=True)):
        print(f"house {house}: predicted {guess:7.1f}k, sold for {price:7.1f}k")
    (REPO / work / "answer.json").write_text(
        json.dumps(
            {
                "request": json.loads(body),
                "response": answer,
                "predicted": predicted.tolist(),
                "price": prices.tolist(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nmodel {MODEL} v{answer['model_version']}; the answer is in {work / 'answer.json'}")
    return 0


def _post(command: list[str], url: str, body: str) -> str:
    """The reply, through curl itself when it is installed, else urllib."""
    if shutil.which("curl"):
        done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
        return done.stdout
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return str(reply.read().decode())


if __name__ == "__main__":
    sys.exit(main())
