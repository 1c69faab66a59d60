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
    endpoint config's S3OutputPath / S3FailurePath, which the template sets to the payload
    store's async-output/ and async-failure/); keeps each call."""

    def __init__(self, output: str = f"{STORE}/async-output", failure: str = "") -> None:
        self.calls: list[dict[str, Any]] = []
        self.output, self.failure = output, failure or f"{STORE}/async-failure"

    def invoke_endpoint_async(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        job = kwargs["InferenceId"]
        return {
            "InferenceId": job,
            "OutputLocation": f"{self.output}/{job}.out",
            "FailureLocation": f"{self.failure}/{job}-error.out",
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
    assert record["output_location"] == f"{STORE}/async-output/{job}.out"
    assert record["failure_location"] == f"{STORE}/async-failure/{job}-error.out"
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
    s3.put_object(Bucket=BUCKET, Key=f"store/async-output/{job}.out", Body=json.dumps(RESULT))

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
    s3.put_object(Bucket=BUCKET, Key=f"store/async-output/{job}.out", Body=raw)

    status = answer(jobs.status(job))

    assert status["status"] == "succeeded"
    assert "result" not in status
    assert status["bytes"] == len(raw)
    assert status["expires_in"] == 120
    assert f"store/async-output/{job}.out" in status["result_url"]
    assert "Expires=" in status["result_url"] or "X-Amz-Expires=120" in status["result_url"]


def test_a_failed_job_reports_the_endpoints_error(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]
    ours = {"error": {"code": "invalid_input", "message": "input 'x' holds NaN"}}
    s3.put_object(Bucket=BUCKET, Key=f"store/async-failure/{job}-error.out", Body=json.dumps(ours))

    status = answer(jobs.status(job))

    assert status["status"] == "failed"
    assert status["error"] == ours["error"]


def test_a_failure_in_sagemakers_own_words_is_quoted(
    s3: Any, runtime: AsyncRuntime, predictor: Predictor
) -> None:
    jobs = queue(s3, runtime)
    job = submit(jobs, predictor)["id"]
    s3.put_object(
        Bucket=BUCKET, Key=f"store/async-failure/{job}-error.out", Body=b"Invocation timed out"
    )

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


# --- a job record written by someone else ----------------------------------------------------

JOB = "0123456789abcdef0123456789abcdef"
SECRET = b'{"planted": "the function must never read or presign this"}'
OUTPUT = f"{STORE}/async-output/{JOB}.out"
FAILURE = f"{STORE}/async-failure/{JOB}-error.out"
ELSEWHERE = [
    f"s3://elsewhere/store/async-output/{JOB}.out",  # another bucket
    f"s3://{BUCKET}/async-output/{JOB}.out",  # the bucket's root, not the store's prefix
    f"s3://{BUCKET}/other/async-output/{JOB}.out",  # another prefix
    f"{STORE}/jobs/{'f' * 32}/request.json",  # another job's request
    f"{STORE}/uploads/{'f' * 32}",  # someone's upload
    f"{STORE}/results/{'f' * 32}/y",
    f"{STORE}/async-output/../jobs/{'f' * 32}/request.json",  # dot segments
    f"{STORE}/async-output/nested/{JOB}.out",
    f"{STORE}/async-output/{JOB}.out\n",  # `$` would match before the newline
    f"{STORE}/async-output/",
    f"s3://user@{BUCKET}/store/async-output/{JOB}.out",
    f"https://{BUCKET}.s3.amazonaws.com/store/async-output/{JOB}.out",
]


class Recorder:
    """Wraps an S3 client and records every object it is asked to read or sign."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.touched: list[tuple[str, str]] = []

    def head_object(self, **kwargs: Any) -> Any:
        self.touched.append((kwargs["Bucket"], kwargs["Key"]))
        return self.client.head_object(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        self.touched.append((kwargs["Bucket"], kwargs["Key"]))
        return self.client.get_object(**kwargs)

    def generate_presigned_url(self, operation: str, Params: dict, **kwargs: Any) -> Any:
        self.touched.append((Params["Bucket"], Params["Key"]))
        return self.client.generate_presigned_url(operation, Params=Params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def plant(s3: Any, record: dict[str, Any]) -> None:
    """Write a job record as someone who can write the payload bucket would, and the planted
    object at every s3:// location it names (so a status that follows one finds it)."""
    s3.create_bucket(Bucket="elsewhere")
    s3.put_object(Bucket=BUCKET, Key=f"store/jobs/{JOB}/job.json", Body=json.dumps(record))
    for location in (record.get("output_location"), record.get("failure_location")):
        if isinstance(location, str) and location.startswith("s3://"):
            bucket, _, key = location.removeprefix("s3://").partition("/")
            s3.put_object(Bucket=bucket.rpartition("@")[2], Key=key, Body=SECRET)


@pytest.mark.parametrize("field", ["output_location", "failure_location"])
@pytest.mark.parametrize("location", [*ELSEWHERE, 42, ["s3://x/y"]])
def test_a_record_pointing_outside_the_store_is_502_and_never_followed(
    s3: Any, runtime: AsyncRuntime, caplog: pytest.LogCaptureFixture, field: str, location: Any
) -> None:
    # GIVEN a record (planted in the payload bucket) naming a location outside the store's
    # async-output/ (async-failure/), and the planted object there
    record = {"id": JOB, "model_name": "big", "model_version": "3",
              "output_location": OUTPUT, "failure_location": FAILURE, field: location}  # fmt: skip
    plant(s3, record)
    recorder = Recorder(s3)

    # WHEN the job's status is asked for
    with pytest.raises(OnnxkitError) as raised:
        queue(recorder, runtime).status(JOB)

    # THEN it is a 502 that says so (in our words), logged, and no location was read or signed
    assert (raised.value.status, raised.value.code) == (502, "job_record_invalid")
    assert "planted" not in raised.value.message
    assert "elsewhere" not in raised.value.message
    assert recorder.touched == [(BUCKET, f"store/jobs/{JOB}/job.json")]
    assert any(r.levelname == "ERROR" and JOB in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "record",
    [
        {"id": JOB, "failure_location": FAILURE},  # no output location
        {"id": "f" * 32, "output_location": OUTPUT, "failure_location": FAILURE},  # another's
        ["s3://x/y"],
    ],
)
def test_a_malformed_record_is_502_job_record_invalid(
    s3: Any, runtime: AsyncRuntime, record: Any
) -> None:
    s3.put_object(Bucket=BUCKET, Key=f"store/jobs/{JOB}/job.json", Body=json.dumps(record))
    s3.put_object(Bucket=BUCKET, Key=f"store/async-output/{JOB}.out", Body=SECRET)

    with pytest.raises(OnnxkitError) as raised:
        queue(s3, runtime).status(JOB)

    assert (raised.value.status, raised.value.code) == (502, "job_record_invalid")


def test_a_record_within_the_store_is_followed(s3: Any, runtime: AsyncRuntime) -> None:
    record = {"id": JOB, "output_location": OUTPUT, "failure_location": None}
    plant(s3, record)

    status = answer(queue(s3, runtime).status(JOB))

    assert (status["status"], status["result"]) == ("succeeded", json.loads(SECRET))


@pytest.mark.parametrize("where", ["output", "failure"])
def test_an_endpoint_writing_outside_the_store_is_refused_at_submit(
    s3: Any, predictor: Predictor, where: str
) -> None:
    # GIVEN an endpoint config whose output (failure) path is not the store's
    runtime = AsyncRuntime(**{where: f"s3://{BUCKET}/elsewhere"})

    with pytest.raises(OnnxkitError) as raised:
        submit(queue(s3, runtime), predictor)

    # THEN no record is written that a status would have to refuse
    assert (raised.value.status, raised.value.code) == (502, "job_record_invalid")
    assert "async-output/" in raised.value.message
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [key for key in keys if key.endswith("job.json")]


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
            {"InferenceId": "i", "OutputLocation": f"{STORE}/async-output/i.out"},
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
