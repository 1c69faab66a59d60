"""Asynchronous jobs over real HTTP: start-api (the function, async mode) -> S3 (moto) and
boto3 InvokeEndpointAsync -> the local endpoint with SageMaker's asynchronous front end
emulated (start-endpoint --async) -> results in S3 -> GET /v2/jobs/{id}; and a job record
planted in the payload bucket that points elsewhere, never followed."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.local.s3 import ensure_bucket
from onnxkit_tools.net import free_port, wait_http
from tests.conftest import REPO
from tests.integration.conftest import ONNXKIT, cli_env, function_env

pytestmark = pytest.mark.integration

PAYLOAD_BUCKET = "onnxkit-payloads"
PAYLOAD_STORE = f"s3://{PAYLOAD_BUCKET}/it"
ENDPOINT_MAX_BATCH = 16
"""The endpoint container's own batch limit, below the function's (1024): a batch between
the two passes the function's validation and fails in the endpoint, as a job's does when the
container was deployed with a smaller limit than the function."""


def serve(args: list[str], values: dict[str, str], ready: str, folder: Path, name: str) -> Any:
    files = folder / f"{name}.json"
    files.write_text(json.dumps({"PredictFunction": values}))
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ONNXKIT, "local", *args, "--port", str(port), "--env-vars", str(files)],
            cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}{ready}", timeout_s=90, process=process)
    except TimeoutError as exc:
        process.terminate()
        raise AssertionError(f"{name}: {exc}\n{log.read_text(errors='replace')[-3000:]}") from exc
    return process, url


@pytest.fixture(scope="module")
def stack(rie: Path, local_s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The endpoint (asynchronous front end on) and the function forwarding to it in async
    mode, both on the moto S3 that holds digits and the payload bucket."""
    folder = tmp_path_factory.mktemp("jobs")
    ensure_bucket(local_s3.client(), PAYLOAD_BUCKET)
    common = function_env(local_s3.endpoint, folder / "cache")["PredictFunction"]
    common["ONNXKIT_PAYLOAD_STORE"] = PAYLOAD_STORE
    if os.environ.get("PYTHONPATH"):  # a checkout run from its folder: the function too
        common["PYTHONPATH"] = f"{REPO / 'functions' / 'predict'}:{os.environ['PYTHONPATH']}"
    processes = []
    try:
        endpoint_values = {**common, "ONNXKIT_MAX_BATCH_SIZE": str(ENDPOINT_MAX_BATCH)}
        process, endpoint = serve(
            ["start-endpoint", "--async", "--workers", "1"], endpoint_values, "/ping", folder,
            "endpoint",
        )  # fmt: skip
        processes.append(process)
        function_values = {
            **common,
            "ONNXKIT_BACKEND": "sagemaker",
            "ONNXKIT_SAGEMAKER_ENDPOINT": "onnxkit-local",
            "ONNXKIT_SAGEMAKER_MODE": "async",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint,
        }
        process, function = serve(
            ["start-api"], function_values, "/v2/health/ready", folder, "function"
        )
        processes.append(process)
        yield {"endpoint": endpoint, "function": function}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def call(url: str, body: Any = None) -> tuple[int, dict, Any]:
    """Status, JSON body and headers (names case-insensitive) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read()), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def digits_request(rows: np.ndarray, request_id: str) -> dict:
    return {"id": request_id, "inputs": [
        {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
         "data": rows.ravel().tolist()}]}  # fmt: skip


def run_job(function: str, body: dict) -> tuple[dict, float]:
    """Submit, poll until the job is no longer pending; the final status and the seconds."""
    started = time.perf_counter()
    status, accepted, headers = call(f"{function}/v2/models/digits/jobs", body)
    assert status == 202, accepted
    assert accepted["status"] == "pending"
    assert headers["Location"] == accepted["links"]["self"]
    while True:
        status, job, headers = call(f"{function}{accepted['links']['self']}")
        assert status == 200, job
        if job["status"] != "pending":
            return job, time.perf_counter() - started
        assert headers["Retry-After"] == "5"
        assert time.perf_counter() - started < 30, "the job never finished"
        time.sleep(0.02)  # far below Retry-After: this measures the job, not the polling


def test_a_job_runs_and_equals_the_synchronous_answer(
    stack: dict, digits_validation: tuple[np.ndarray, np.ndarray]
) -> None:
    # GIVEN eight held-out digits
    features, labels = digits_validation
    body = digits_request(features[:8].astype(np.float32), "job-equals-sync")

    # WHEN they go as a job through the function, and synchronously to the endpoint
    job, job_seconds = run_job(stack["function"], body)
    started = time.perf_counter()
    status, sync, _ = call(f"{stack['endpoint']}/invocations", body)
    sync_seconds = time.perf_counter() - started

    # THEN the job succeeded with the very answer the endpoint gives synchronously
    assert status == 200, sync
    assert job["status"] == "succeeded", job
    assert job["result"] == sync
    assert job["result"]["id"] == "job-equals-sync"
    label = next(o for o in sync["outputs"] if o["datatype"] == "INT64")
    assert (np.asarray(label["data"]) == labels[:8]).mean() >= 0.75
    print(f"\njob submit->succeeded {job_seconds * 1000:.0f} ms; sync {sync_seconds * 1000:.0f} ms")


def test_a_job_that_fails_in_the_endpoint_reports_its_error(
    stack: dict, digits_validation: tuple[np.ndarray, np.ndarray]
) -> None:
    # GIVEN a batch the function accepts but the endpoint's own limit refuses
    features, _ = digits_validation
    body = digits_request(features[: ENDPOINT_MAX_BATCH * 2].astype(np.float32), "too-big")

    job, _ = run_job(stack["function"], body)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "payload_too_large"
    assert str(ENDPOINT_MAX_BATCH) in job["error"]["message"]


def test_the_function_refuses_what_it_can_tell_at_once(stack: dict) -> None:
    function = stack["function"]
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert call(f"{function}/v2/models/digits/jobs", bad)[:2][0] == 400
    status, error, _ = call(f"{function}/v2/models/digits/infer", bad | {"inputs": [
        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})  # fmt: skip
    assert (status, error["error"]["code"]) == (409, "use_jobs")
    status, error, _ = call(f"{function}/v2/jobs/{'0' * 32}")
    assert (status, error["error"]["code"]) == (404, "job_not_found")


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        ("onnxkit-it", "onnxkit/planted.json"),  # the model bucket
        (PAYLOAD_BUCKET, f"it/jobs/{'f' * 32}/request.json"),  # another job's request
        (PAYLOAD_BUCKET, "async-output/planted.out"),  # the bucket's root, not the store's
    ],
)
def test_a_planted_job_record_pointing_elsewhere_is_502_never_followed(
    stack: dict, local_s3: Any, bucket: str, key: str
) -> None:
    # GIVEN someone who can write the payload bucket: a record for a job id, pointing at an
    # object outside the store's async-output/ that the function's role could read
    job = "0123456789abcdef" * 2
    secret = {"planted": "never to be read back through the API"}
    client = local_s3.client()
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(secret).encode())
    record = {"id": job, "model_name": "digits", "model_version": "1",
              "output_location": f"s3://{bucket}/{key}", "failure_location": None}  # fmt: skip
    client.put_object(
        Bucket=PAYLOAD_BUCKET, Key=f"it/jobs/{job}/job.json", Body=json.dumps(record).encode()
    )

    # WHEN a client asks for the job
    status, body, _ = call(f"{stack['function']}/v2/jobs/{job}")

    # THEN 502 job_record_invalid: neither the object nor a URL to it comes back
    assert status == 502, body
    assert body["error"]["code"] == "job_record_invalid"
    assert "planted" not in json.dumps(body)
    assert "result_url" not in body
