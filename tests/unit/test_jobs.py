"""Asynchronous jobs: submit (validate, store, InvokeEndpointAsync, record), status (pending,
succeeded inline or by URL, failed), ids, faults, and infer refused on an async endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto import mock_aws

from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.codecs import Reply
from onnxkit.compose import build_jobs
from onnxkit.errors import OnnxkitError, UnsupportedMediaTypeError
from onnxkit.jobs import JobQueue, JobsOff
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, RouteTable, negotiate
from onnxkit.settings import ApiSettings, Settings

BUCKET = "payloads"
STORE = f"s3://{BUCKET}/store"
MANIFEST = Manifest(
    name="big",
    version="3",
    files=(FileEntry("model.onnx", "0" * 64, 900_000_000),),
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    opset=17,
    backend="sagemaker",
)
REQUEST = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
RESULT = {"model_name": "big", "model_version": "3", "outputs": [
    {"name": "y", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}  # fmt: skip


class AsyncRuntime:
    """sagemaker-runtime's InvokeEndpointAsync as SageMaker answers it (locations under the
    endpoint config's S3OutputPath / S3FailurePath); keeps each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint_async(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        job = kwargs["InferenceId"]
        return {
            "InferenceId": job,
            "OutputLocation": f"s3://{BUCKET}/async-output/{job}.out",
            "FailureLocation": f"s3://{BUCKET}/async-failure/{job}-error.out",
        }

    def invoke_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("an asynchronous endpoint is never sent InvokeEndpoint")


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def runtime() -> AsyncRuntime:
    return AsyncRuntime()


def predictor_for(backend: Any) -> Predictor:
    return Predictor(MANIFEST.name, lambda: backend, ApiSettings())


@pytest.fixture
def predictor(runtime: AsyncRuntime) -> Predictor:
    return predictor_for(SageMakerBackend(MANIFEST, runtime, "gpu", asynchronous=True))


def queue(s3: Any, runtime: Any, **options: Any) -> JobQueue:
    options = {"inline_result_bytes": 1024, "url_seconds": 600, **options}
    return JobQueue(s3, runtime, "gpu", STORE, **options)


def answer(reply: Reply) -> dict[str, Any]:
    assert reply.content_type == "application/json"
    return json.loads(reply.body)


def submit(jobs: JobQueue, predictor: Predictor, body: Any = None) -> dict[str, Any]:
    return answer(jobs.submit(predictor, "big", None, json.dumps(body or REQUEST).encode()))


def test_submit_stores_the_request_invokes_async_and_records_the_job(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)

    reply = jobs.submit(predictor, "big", None, json.dumps(REQUEST).encode())

    accepted = answer(reply)
    job = accepted["id"]
    assert accepted == {"id": job, "status": "pending", "model_name": "big",
                        "model_version": "3", "links": {"self": f"/v2/jobs/{job}"}}  # fmt: skip
    assert reply.headers["Location"] == f"/v2/jobs/{job}"
    assert len(job) == 32
    stored = s3.get_object(Bucket=BUCKET, Key=f"store/jobs/{job}/request.json")["Body"].read()
    assert json.loads(stored) == REQUEST
    (call,) = runtime.calls
    assert call["EndpointName"] == "gpu"
    assert call["InputLocation"] == f"s3://{BUCKET}/store/jobs/{job}/request.json"
    assert call["InferenceId"] == job
    assert call["ContentType"] == "application/json"
    assert call["InvocationTimeoutSeconds"] == 3600
    assert call["CustomAttributes"] == "model=big;version=3"
    record = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"store/jobs/{job}/job.json")["Body"].read()
    )
    assert record["output_location"] == f"s3://{BUCKET}/async-output/{job}.out"
    assert record["failure_location"] == f"s3://{BUCKET}/async-failure/{job}-error.out"
    assert record["model_name"] == "big"
    assert record["created"].endswith("+00:00")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
         "invalid_input"),
        ({"inputs": [{"name": "nope", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
         "invalid_input"),
        ({**REQUEST, "outputs": [{"name": "z"}]}, "invalid_input"),
    ],
)  # fmt: skip
def test_a_request_infer_would_refuse_is_refused_before_anything_is_sent(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor, body: dict, code: str
) -> None:
    with pytest.raises(OnnxkitError) as raised:
        submit(queue(s3, runtime), predictor, body)
    assert raised.value.status == 400
    assert raised.value.code == code
    assert runtime.calls == []
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_a_pending_job_says_so_with_retry_after(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]

    reply = jobs.status(job)

    assert answer(reply)["status"] == "pending"
    assert answer(reply)["model_name"] == "big"
    assert reply.headers["Retry-After"] == "5"


def test_a_small_result_comes_inline(s3: Any, runtime: AsyncRuntime, predictor: Predictor) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]
    s3.put_object(Bucket=BUCKET, Key=f"async-output/{job}.out", Body=json.dumps(RESULT))

    status = answer(jobs.status(job))

    assert status["status"] == "succeeded"
    assert status["result"] == RESULT
    assert "result_url" not in status


def test_a_large_result_comes_as_a_presigned_url(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime, inline_result_bytes=10, url_seconds=120)
    job = submit(jobs, predictor)["id"]
    raw = json.dumps(RESULT).encode()
    s3.put_object(Bucket=BUCKET, Key=f"async-output/{job}.out", Body=raw)

    status = answer(jobs.status(job))

    assert status["status"] == "succeeded"
    assert "result" not in status
    assert status["bytes"] == len(raw)
    assert status["expires_in"] == 120
    assert f"async-output/{job}.out" in status["result_url"]
    assert "Expires=" in status["result_url"] or "X-Amz-Expires=120" in status["result_url"]


def test_a_failed_job_reports_the_endpoints_error(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]
    ours = {"error": {"code": "invalid_input", "message": "input 'x' holds NaN"}}
    s3.put_object(Bucket=BUCKET, Key=f"async-failure/{job}-error.out", Body=json.dumps(ours))

    status = answer(jobs.status(job))

    assert status["status"] == "failed"
    assert status["error"] == ours["error"]


def test_a_failure_in_sagemakers_own_words_is_quoted(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]
    s3.put_object(Bucket=BUCKET, Key=f"async-failure/{job}-error.out", Body=b"Invocation timed out")

    error = answer(jobs.status(job))["error"]

    assert error["code"] == "job_failed"
    assert "Invocation timed out" in error["message"]


@pytest.mark.parametrize("job", ["0" * 32, "a" * 32])
def test_an_unknown_job_is_404(s3: Any, runtime: AsyncRuntime, job: str) -> None:
    with pytest.raises(OnnxkitError) as raised:
        queue(s3, runtime).status(job)
    assert (raised.value.status, raised.value.code) == (404, "job_not_found")


@pytest.mark.parametrize("job", ["../etc", "A" * 32, "0" * 31, "x", "0" * 32 + "/job.json"])
def test_a_malformed_id_is_404_before_any_s3_call(runtime: AsyncRuntime, job: str) -> None:
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s")  # fmt: skip
    with Stubber(s3), pytest.raises(OnnxkitError) as raised:  # nothing queued: a call fails
        queue(s3, runtime).status(job)
    assert (raised.value.status, raised.value.code) == (404, "job_not_found")


def sagemaker_runtime() -> Any:
    return boto3.client("sagemaker-runtime", region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "http", "status", "ours", "retry"),
    [
        ("ThrottlingException", 429, 429, "backend_throttled", "1"),
        ("ServiceUnavailable", 503, 503, "backend_unavailable", None),
        ("ValidationError", 400, 503, "backend_unavailable", None),  # no such endpoint
    ],
)  # fmt: skip
def test_sagemaker_faults_map_as_the_backends_do(
    s3: Any, code: str, http: int, status: int, ours: str, retry: str | None
) -> None:
    runtime = sagemaker_runtime()
    predictor = predictor_for(SageMakerBackend(MANIFEST, runtime, "gpu", asynchronous=True))
    with Stubber(runtime) as stub:
        stub.add_client_error(
            "invoke_endpoint_async", service_error_code=code, http_status_code=http,
            service_message="Endpoint gpu of account 1 not found." if http == 400 else "x",
        )  # fmt: skip
        with pytest.raises(OnnxkitError) as raised:
            submit(queue(s3, runtime), predictor)
    assert (raised.value.status, raised.value.code) == (status, ours)
    assert raised.value.headers.get("Retry-After") == retry


def test_the_real_client_sends_what_the_service_model_names(s3: Any) -> None:
    runtime = sagemaker_runtime()
    predictor = predictor_for(SageMakerBackend(MANIFEST, runtime, "gpu", asynchronous=True))
    with Stubber(runtime) as stub:
        stub.add_response(
            "invoke_endpoint_async",
            {"InferenceId": "i", "OutputLocation": "s3://b/async-output/i.out"},
        )
        accepted = submit(queue(s3, runtime), predictor)
        stub.assert_no_pending_responses()
    record = s3.get_object(Bucket=BUCKET, Key=f"store/jobs/{accepted['id']}/job.json")
    assert json.loads(record["Body"].read())["failure_location"] is None


@pytest.mark.parametrize(
    ("code", "http", "retry"), [("SlowDown", 503, "1"), ("AccessDenied", 403, None),
                                ("InternalError", 500, None)],
)  # fmt: skip
def test_s3_faults_are_job_store_unavailable(
    runtime: AsyncRuntime, predictor: Predictor, code: str, http: int, retry: str | None
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k",
                      aws_secret_access_key="s")  # fmt: skip
    with Stubber(s3) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=http)
        with pytest.raises(OnnxkitError) as raised:
            submit(queue(s3, runtime), predictor)
    assert (raised.value.status, raised.value.code) == (503, "job_store_unavailable")
    assert raised.value.headers.get("Retry-After") == retry
    assert runtime.calls == []  # nothing queued without its input stored


def test_an_unreachable_store_is_job_store_unavailable(runtime: AsyncRuntime) -> None:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                      aws_access_key_id="k", aws_secret_access_key="s",
                      config=Config(
                          retries={"max_attempts": 1}, connect_timeout=1))  # fmt: skip
    with pytest.raises(OnnxkitError) as raised:
        queue(s3, runtime).status("0" * 32)
    assert (raised.value.status, raised.value.code) == (503, "job_store_unavailable")


def test_infer_on_an_async_endpoint_says_to_use_jobs(predictor: Predictor) -> None:
    with pytest.raises(OnnxkitError) as raised:
        predictor.infer("big", None, json.dumps(REQUEST))
    assert (raised.value.status, raised.value.code) == (409, "use_jobs")
    assert "/v2/models/big/jobs" in raised.value.message


class InFunction:
    """A backend that runs in the function (not forwarded)."""

    manifest = MANIFEST
    processing = None

    def run(self, inputs: dict, outputs: list | None = None) -> dict:
        return {"y": np.zeros((1, 1), np.float32)}


def test_a_job_for_a_model_that_runs_in_the_function_says_to_use_infer(
    s3: Any, runtime: AsyncRuntime
) -> None:
    with pytest.raises(OnnxkitError) as raised:
        submit(queue(s3, runtime), predictor_for(InFunction()))
    assert (raised.value.status, raised.value.code) == (409, "use_infer")
    assert runtime.calls == []


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, ["ONNXKIT_PAYLOAD_STORE", "ONNXKIT_SAGEMAKER_ENDPOINT", "ONNXKIT_SAGEMAKER_MODE"]),
        ({"ONNXKIT_PAYLOAD_STORE": STORE, "ONNXKIT_SAGEMAKER_ENDPOINT": "gpu"},
         ["ONNXKIT_SAGEMAKER_MODE=async"]),
    ],
)  # fmt: skip
def test_jobs_off_say_how_to_turn_them_on(
    runtime: AsyncRuntime, env: dict, names: list[str]
) -> None:
    model = {"ONNXKIT_MODEL_STORE": "s3://models/p", "ONNXKIT_MODEL_NAME": "big"}
    settings = Settings.from_env({**model, **env})
    jobs = build_jobs(settings, None)  # type: ignore[arg-type]  # no client is made
    assert isinstance(jobs, JobsOff)
    with pytest.raises(OnnxkitError) as raised:
        jobs.status("0" * 32)
    assert (raised.value.status, raised.value.code) == (404, "jobs_not_enabled")
    for name in names:
        assert name in raised.value.message
    assert "SageMakerMode: async" in raised.value.message


def test_the_function_routes_a_job_and_answers_202(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    table = RouteTable(FUNCTION, jobs=queue(s3, runtime))
    route, params = table.match("POST", "/v2/models/big/jobs")
    negotiate(route, content_type="application/json", accept=None)

    reply = table.perform(predictor, route, params, json.dumps(REQUEST).encode())

    assert route.status == 202
    job = answer(reply)["id"]
    route, params = table.match("GET", f"/v2/jobs/{job}")
    assert answer(table.perform(predictor, route, params))["status"] == "pending"
    with pytest.raises(UnsupportedMediaTypeError):  # a job's request is stored as JSON
        negotiate(route := table.match("POST", "/v2/models/big/jobs")[0],
                  content_type="application/octet-stream", accept=None)  # fmt: skip
