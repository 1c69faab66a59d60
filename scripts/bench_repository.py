"""What serving many models costs: a model's first request, a reload after eviction, a warm call.

One process, S3 on a moto server (its own process, on the same CPUs). Each model is published
as ``onnxkit publish`` does (version 1, alias prod, no CPU twin) under --models names. Per round:

  first      a repository (ONNXKIT_MODELS) answers its first request to each model: alias,
             manifest, GET, sha256, session, warm-up, then the inference (the load on demand)
  floor      the same model the naive way: one raw S3 GET of the graph, InferenceSession from
             the bytes, one run
  reload     with a memory budget that fits one model, requests alternate between two: each
             evicts the other and reloads its own (the cost of a budget that is too small)
  warm       --warm requests to a loaded model through the repository, through a
             single-model Predictor, and bare session.run (medians), alternating in blocks
             of 20 in a rotating order (the first 3 of each block dropped)

Prints the median over rounds with its spread (min-max) and the ratios of the medians.

    .venv/bin/python scripts/bench_repository.py [--model digits|synthetic] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.local.s3 import MotoProcess, ensure_bucket

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-many"
STORE = f"s3://{BUCKET}/onnxkit"


def synthetic_model(folder: Path, megabytes: int) -> tuple[Path, dict[str, Any]]:
    """x [N, 256] @ W [256, k] with k sized to the given megabytes; one request body."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    columns = megabytes * 1024 * 1024 // (256 * 4)
    weights = np.random.default_rng(0).standard_normal((256, columns)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y0"]),
            helper.make_node("ReduceSum", ["y0"], ["y"], keepdims=0),
        ],
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(weights, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(proto, str(path))
    body = {"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}
    return path, body


def digits_model() -> tuple[Path, dict[str, Any]]:
    from onnxkit_tools.local.s3 import default_model_dir  # the example's cache, built once

    event = json.loads((REPO / "events" / "predict_infer_200.json").read_text())
    return default_model_dir() / "int8" / "model.onnx", json.loads(event["body"])


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ms ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--synthetic-mb", type=int, default=32, help="size of the synthetic model")
    parser.add_argument("--models", type=int, default=5, help="models published (copies)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warm", type=int, default=200, help="warm requests per round and path")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from onnxkit.aws import AwsClients
    from onnxkit.compose import build_predictor, build_repository
    from onnxkit.repository import Budget, memory_cost
    from onnxkit.routes import FUNCTION
    from onnxkit.settings import Settings
    from onnxkit_tools.registry import Registry, publish_model

    names = [f"m{i}" for i in range(1, args.models + 1)]
    work = Path(tempfile.mkdtemp(prefix="bench-many-"))
    if args.model == "digits":
        path, request = digits_model()
    else:
        path, request = synthetic_model(work / "synthetic", args.synthetic_mb)
    body = json.dumps(request).encode()
    feed = {
        spec["name"]: np.array(spec["data"], np.float32).reshape(spec["shape"])
        for spec in request["inputs"]
    }
    size_mb = path.stat().st_size / 1e6
    first: list[float] = []
    floor: list[float] = []
    reload: list[float] = []
    warm: dict[str, list[float]] = {"repository": [], "predictor": [], "session.run": []}
    with MotoProcess() as s3:
        client = s3.client()
        ensure_bucket(client, BUCKET)
        registry = Registry.from_uri(STORE, cache_dir=work / "pub", s3_client=client)
        for name in names:
            manifest = publish_model(
                registry, path, name=name, version="1", alias="prod", cpu_graph=False
            )
        graph_key = f"onnxkit/models/{names[0]}/1/model.onnx"
        clients = AwsClients(s3=client)
        for round_ in range(args.rounds):
            environ = {
                "ONNXKIT_MODEL_STORE": STORE,
                "ONNXKIT_MODELS": ",".join(names),
                "ONNXKIT_CACHE_DIR": str(work / f"cache-{round_}"),
                "ONNXKIT_REFRESH_SECONDS": "0",
            }
            repository = build_repository(
                Settings.from_env(environ), role=FUNCTION, clients=clients
            )
            for name in names:
                first.append(timed(lambda r=repository, n=name: r.infer(n, None, body)))

                def naive() -> None:
                    raw = client.get_object(Bucket=BUCKET, Key=graph_key)["Body"].read()
                    ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(None, feed)

                floor.append(timed(naive))

            # a budget that fits one model: each request to the other evicts it
            one = Budget(memory_bytes=memory_cost([manifest]) + 1)
            tight = build_repository(
                Settings.from_env(environ), role=FUNCTION, clients=clients, budget=one
            )
            tight.infer(names[0], None, body)
            for step in range(6):
                name = names[(step + 1) % 2]
                reload.append(timed(lambda t=tight, n=name: t.infer(n, None, body)))

            single = build_predictor(
                Settings.from_env(
                    {**environ, "ONNXKIT_MODELS": "", "ONNXKIT_MODEL_NAME": names[0]}
                ),
                role=FUNCTION,
                clients=clients,
            )
            single.infer(names[0], None, body)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            paths: dict[str, Callable[[], object]] = {
                "repository": lambda r=repository: r.infer(names[0], None, body),
                "predictor": lambda p=single: p.infer(names[0], None, body),
                "session.run": lambda s=session: s.run(None, feed),
            }
            samples: dict[str, list[float]] = {key: [] for key in paths}
            order = list(paths)
            for block_number in range(args.warm // 20):  # blocks of 20, the first 3 dropped
                # each path follows each other equally often: a session's spinning pool
                # slows whatever runs right after it
                shift = block_number % len(order)
                for key in order[shift:] + order[:shift]:
                    block = [timed(paths[key]) for _ in range(20)]
                    samples[key] += block[3:]
            for key in paths:
                warm[key].append(statistics.median(samples[key]))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(f"model: {args.model} ({size_mb:.2f} MB graph), {args.models} models, "
          f"{args.rounds} rounds; moto S3 on 127.0.0.1")  # fmt: skip
    print(f"first request (load on demand + infer) {summary(first)}")
    print(f"floor (raw GET + InferenceSession + run) {summary(floor)}")
    print(f"  ratio first/floor: {statistics.median(first) / statistics.median(floor):.2f}x")
    print(f"reload after eviction (budget for one)  {summary(reload)}")
    for key, values in warm.items():
        print(f"warm {key:<12} {summary(values)}")
    base = statistics.median(warm["session.run"])
    for key in ("repository", "predictor"):
        print(f"  ratio warm {key}/session.run: {statistics.median(warm[key]) / base:.2f}x")
    print(
        "  ratio warm repository/predictor: "
        f"{statistics.median(warm['repository']) / statistics.median(warm['predictor']):.3f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
