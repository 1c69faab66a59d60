"""Settings.from_env: defaults, validation of every variable, and problems reported together."""

from __future__ import annotations

import dataclasses
from http import HTTPStatus

import pytest

from onnxkit.errors import ConfigurationError
from onnxkit.settings import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_REQUEST_BYTES,
    ApiSettings,
    AwsSettings,
    EndpointSettings,
    FunctionSettings,
    ModelSettings,
    SessionSettings,
    Settings,
    unknown_variables,
)

MINIMAL = {"ONNXKIT_MODEL_STORE": "s3://model-bucket/onnxkit", "ONNXKIT_MODEL_NAME": "digits"}


def test_defaults_from_the_two_required_variables() -> None:
    settings = Settings.from_env(MINIMAL)

    assert settings == Settings(
        model=ModelSettings(
            store="s3://model-bucket/onnxkit",
            name="digits",
            alias="prod",
            version=None,
            cache_dir="/tmp/onnxkit",
        ),
        aws=AwsSettings(s3_max_attempts=3, s3_connect_timeout=2.0, s3_read_timeout=10.0),
        session=SessionSettings(providers=("CPUExecutionProvider",), intra_op_threads=0),
        api=ApiSettings(
            max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
            max_batch_size=DEFAULT_MAX_BATCH_SIZE,
            serve_openapi=False,
        ),
        function=FunctionSettings(route_prefix="", metrics_namespace="Onnxkit"),
    )
    assert settings.api.max_request_bytes == 6 * 1024 * 1024
    assert settings.model.ref == "prod"
    assert settings.endpoint == EndpointSettings(host="127.0.0.1", port=8080, workers=0)
    assert settings.endpoint.threads is None  # auto: the worker plan decides


def test_every_variable_is_read_and_converted() -> None:
    env = {
        "ONNXKIT_MODEL_STORE": "file:///srv/models/",
        "ONNXKIT_MODEL_NAME": "digits",
        "ONNXKIT_MODEL_ALIAS": "staging",
        "ONNXKIT_MODEL_VERSION": "2024-06-01.1",
        "ONNXKIT_CACHE_DIR": "/mnt/cache",
        "ONNXKIT_INTRA_OP_THREADS": "4",
        "ONNXKIT_MAX_REQUEST_BYTES": "1024",
        "ONNXKIT_MAX_BATCH_SIZE": "8",
        "ONNXKIT_S3_MAX_ATTEMPTS": "5",
        "ONNXKIT_S3_CONNECT_TIMEOUT": "0.5",
        "ONNXKIT_S3_READ_TIMEOUT": " 30 ",
        "ONNXKIT_ROUTE_PREFIX": "/zip/",
        "POWERTOOLS_METRICS_NAMESPACE": "Digits",
    }

    settings = Settings.from_env(env)

    assert settings.model.store == "file:///srv/models"  # trailing slash dropped
    assert settings.model.alias == "staging"
    assert settings.model.version == "2024-06-01.1"
    assert settings.model.cache_dir == "/mnt/cache"
    assert settings.session.intra_op_threads == 4
    assert settings.api.max_request_bytes == 1024
    assert settings.api.max_batch_size == 8
    assert settings.aws.s3_max_attempts == 5
    assert settings.aws.s3_connect_timeout == 0.5
    assert settings.aws.s3_read_timeout == 30.0
    assert settings.function.route_prefix == "/zip"
    assert settings.function.metrics_namespace == "Digits"


def test_version_overrides_alias_in_model_ref() -> None:
    pinned = Settings.from_env(
        {**MINIMAL, "ONNXKIT_MODEL_ALIAS": "canary", "ONNXKIT_MODEL_VERSION": "7"}
    )
    by_alias = Settings.from_env({**MINIMAL, "ONNXKIT_MODEL_ALIAS": "canary"})

    assert pinned.model.ref == "7"
    assert pinned.model.alias == "canary"
    assert by_alias.model.ref == "canary"
    assert by_alias.model.version is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/zip", "/zip"), ("/zip/", "/zip"), ("/a/b", "/a/b"), ("/", ""), ("", ""), ("  ", "")],
)
def test_route_prefix_is_normalised(raw: str, expected: str) -> None:
    settings = Settings.from_env({**MINIMAL, "ONNXKIT_ROUTE_PREFIX": raw})

    assert settings.function.route_prefix == expected


@pytest.mark.parametrize("raw", ["zip", "/with space", "zip/"])
def test_route_prefix_must_start_with_a_slash_and_have_no_spaces(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, "ONNXKIT_ROUTE_PREFIX": raw})

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("ONNXKIT_ROUTE_PREFIX=")


def test_every_bad_value_is_reported_together() -> None:
    # GIVEN one bad or missing value for every variable
    env = {
        "ONNXKIT_MODEL_NAME": "Not A Name",
        "ONNXKIT_MODEL_ALIAS": "PROD",
        "ONNXKIT_MODEL_VERSION": "v 1",
        "ONNXKIT_INTRA_OP_THREADS": "many",
        "ONNXKIT_MAX_REQUEST_BYTES": "0",
        "ONNXKIT_MAX_BATCH_SIZE": "-5",
        "ONNXKIT_S3_MAX_ATTEMPTS": "21",
        "ONNXKIT_S3_CONNECT_TIMEOUT": "soon",
        "ONNXKIT_S3_READ_TIMEOUT": "0",
        "ONNXKIT_ROUTE_PREFIX": "zip",
    }

    # WHEN the settings are built
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)

    # THEN one error lists every problem, one per variable, and the store as missing
    error = caught.value
    assert error.status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert error.code == "configuration_error"
    assert len(error.problems) == 11
    named = [problem.split("=")[0].split(" ")[0] for problem in error.problems]
    assert sorted(named) == sorted(["ONNXKIT_MODEL_STORE", *env])
    assert "ONNXKIT_MODEL_STORE is required" in error.problems[0]
    assert "ONNXKIT_INTRA_OP_THREADS='many' is not a valid int" in error.problems
    assert "ONNXKIT_S3_CONNECT_TIMEOUT='soon' is not a valid float" in error.problems
    assert "ONNXKIT_MAX_REQUEST_BYTES='0' is out of range" in error.problems
    assert all(problem in error.message for problem in error.problems)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("ONNXKIT_MODEL_STORE", "http://bucket/prefix"),
        ("ONNXKIT_MODEL_STORE", "s3://UpperCase/prefix"),
        ("ONNXKIT_MODEL_STORE", "s3://ab"),
        ("ONNXKIT_MODEL_NAME", "-leading-dash"),
        ("ONNXKIT_MODEL_NAME", "x" * 65),
        ("ONNXKIT_INTRA_OP_THREADS", "257"),
        ("ONNXKIT_INTRA_OP_THREADS", "1.5"),
        ("ONNXKIT_S3_MAX_ATTEMPTS", "0"),
        ("ONNXKIT_S3_READ_TIMEOUT", "-1"),
        ("ONNXKIT_S3_READ_TIMEOUT", "nan"),
    ],
)
def test_one_bad_value_is_one_problem(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, name: raw})

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}=")


@pytest.mark.parametrize("name", ["ONNXKIT_S3_CONNECT_TIMEOUT", "ONNXKIT_S3_READ_TIMEOUT"])
def test_infinite_timeouts_are_refused(name: str) -> None:
    # An infinite timeout cannot be given to a socket (OverflowError on the first S3 call),
    # so it must fail at init with the other bad values, not on the first request.
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, name: "inf"})

    assert caught.value.problems == [f"{name}='inf' is out of range"]


@pytest.mark.parametrize("name", ["ONNXKIT_MODEL_STORE", "ONNXKIT_MODEL_NAME"])
def test_blank_required_values_are_missing(name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, name: "   "})

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name} is required")


def test_blank_optional_values_take_their_defaults() -> None:
    env = {**MINIMAL, "ONNXKIT_MODEL_VERSION": "", "ONNXKIT_MAX_BATCH_SIZE": "  "}

    settings = Settings.from_env(env)

    assert settings.model.version is None
    assert settings.api.max_batch_size == DEFAULT_MAX_BATCH_SIZE


def test_settings_are_frozen() -> None:
    settings = Settings.from_env(MINIMAL)

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.model = ModelSettings()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.model.name = "other"  # type: ignore[misc]


def test_unknown_variables_lists_likely_typos_only() -> None:
    env = {
        **MINIMAL,
        "ONNXKIT_MODEL_VERSON": "2",
        "ONNXKIT_CACHEDIR": "/tmp/x",
        "HOME": "/root",
        "onnxkit_model_name": "lower-case is not ours",
    }

    assert unknown_variables(env) == ["ONNXKIT_CACHEDIR", "ONNXKIT_MODEL_VERSON"]
    assert unknown_variables(MINIMAL) == []
    assert Settings.from_env(env).ignored_variables == ("ONNXKIT_CACHEDIR", "ONNXKIT_MODEL_VERSON")


def test_the_endpoint_section_reads_its_variables() -> None:
    env = {
        **MINIMAL,
        "ONNXKIT_BIND_HOST": "0.0.0.0",
        "SAGEMAKER_BIND_TO_PORT": "9090",
        "ONNXKIT_WORKERS": "3",
        "ONNXKIT_SERVER_THREADS": "0",
        "ONNXKIT_MAX_CONCURRENCY": "16",
        "ONNXKIT_DYNAMIC_BATCH_ROWS": "32",
        "ONNXKIT_DYNAMIC_BATCH_WAIT_MS": "2.5",
        "ONNXKIT_DRAIN_SECONDS": "20",
        "ONNXKIT_HEADER_TIMEOUT": "3",
        "ONNXKIT_SERVE_OPENAPI": "true",
    }

    settings = Settings.from_env(env)

    assert settings.endpoint == EndpointSettings(
        host="0.0.0.0",
        port=9090,
        workers=3,
        threads=0,
        max_concurrency=16,
        batch_rows=32,
        batch_wait_ms=2.5,
        drain_seconds=20.0,
        header_timeout=3.0,
    )
    assert settings.endpoint.batching
    assert settings.api.serve_openapi is True
    assert settings.deprecated_variables == ()


@pytest.mark.parametrize("rows", ["0", "1"])
def test_dynamic_batching_is_off_below_two_rows(rows: str) -> None:
    settings = Settings.from_env({**MINIMAL, "ONNXKIT_DYNAMIC_BATCH_ROWS": rows})

    assert not settings.endpoint.batching


def test_the_old_batching_names_still_work_and_are_reported_as_deprecated() -> None:
    env = {**MINIMAL, "ONNXKIT_BATCH_MAX_SIZE": "16", "ONNXKIT_BATCH_MAX_WAIT_MS": "7"}

    settings = Settings.from_env(env)

    assert (settings.endpoint.batch_rows, settings.endpoint.batch_wait_ms) == (16, 7.0)
    assert settings.deprecated_variables == (
        ("ONNXKIT_BATCH_MAX_SIZE", "ONNXKIT_DYNAMIC_BATCH_ROWS"),
        ("ONNXKIT_BATCH_MAX_WAIT_MS", "ONNXKIT_DYNAMIC_BATCH_WAIT_MS"),
    )
    assert settings.ignored_variables == ()


def test_the_new_batching_name_wins_over_the_old_one() -> None:
    env = {**MINIMAL, "ONNXKIT_BATCH_MAX_SIZE": "16", "ONNXKIT_DYNAMIC_BATCH_ROWS": "8"}

    settings = Settings.from_env(env)

    assert settings.endpoint.batch_rows == 8
    assert settings.deprecated_variables == ()


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("1", True), ("On", True), ("false", False), ("0", False)]
)
def test_flags_read_the_usual_spellings(raw: str, expected: bool) -> None:
    settings = Settings.from_env({**MINIMAL, "ONNXKIT_SERVE_OPENAPI": raw})

    assert settings.api.serve_openapi is expected


def test_a_flag_that_is_no_boolean_is_a_problem() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, "ONNXKIT_SERVE_OPENAPI": "perhaps"})

    assert caught.value.problems == [
        "ONNXKIT_SERVE_OPENAPI='perhaps' is not a valid boolean (true/false)"
    ]


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "0"),
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("ONNXKIT_WORKERS", "-1"),
        ("ONNXKIT_SERVER_THREADS", "x"),
        ("ONNXKIT_MAX_CONCURRENCY", "0"),
        ("ONNXKIT_BIND_HOST", "bad host"),
        ("ONNXKIT_HEADER_TIMEOUT", "0"),
    ],
)
def test_bad_endpoint_values_are_problems(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, name: raw})

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}=")


def test_a_model_folder_needs_neither_store_nor_name() -> None:
    settings = Settings.from_env({"ONNXKIT_MODEL_DIR": "/opt/ml/model"})

    assert settings.model.model_dir == "/opt/ml/model"
    assert settings.model.name is None  # the folder's manifest names it
    assert settings.model.store == ""


def test_a_gpu_provider_is_wanted_only_when_asked_for() -> None:
    cpu = Settings.from_env(MINIMAL)
    gpu = Settings.from_env(
        {**MINIMAL, "ONNXKIT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"}
    )

    assert not cpu.session.wants_gpu
    assert gpu.session.wants_gpu
    assert gpu.session.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_many_models_settings_are_read_and_checked_together() -> None:
    from onnxkit.settings import ModelsSettings

    settings = Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": "s3://bucket/prefix",
            "ONNXKIT_MODELS": " digits, minilm ,digits",
            "ONNXKIT_MODELS_MEMORY_MB": "900",
        }
    )
    assert settings.models == ModelsSettings(names=("digits", "minilm"), memory_mb=900)
    assert settings.model.name is None  # no single model with ONNXKIT_MODELS
    every = Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": "s3://bucket/p",
            "ONNXKIT_MODELS": "*",
            "ONNXKIT_MODELS_ALLOW": "d*, m*",
        }
    )
    assert every.models.every
    assert every.models.allow == ("d*", "m*")
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {
                "ONNXKIT_MODEL_STORE": "s3://bucket/p",
                "ONNXKIT_MODELS": "Digits,ok",
                "ONNXKIT_MODELS_DISK_MB": "0",
                "ONNXKIT_SAGEMAKER_MODE": "batch",
                "ONNXKIT_PAYLOAD_STORE": "file:///tmp/x",
            }
        )
    message = str(caught.value)
    assert "'Digits'" in message
    assert "ONNXKIT_MODELS_DISK_MB" in message
    assert "ONNXKIT_SAGEMAKER_MODE" in message
    assert "ONNXKIT_PAYLOAD_STORE" in message
    assert "ONNXKIT_MODEL_NAME" not in message
