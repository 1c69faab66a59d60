"""Unit tests of template.yaml's GPU path: the SageMaker endpoint behind one condition.

``SageMakerImageUri`` is the switch: empty (the default) leaves no SageMaker resource, no
endpoint variable and no SageMaker permission anywhere; an image URI creates the model, the
endpoint config, the endpoint, its execution role and auto scaling, and lets the functions
invoke that endpoint and nothing else. Translation as in test_template.py (see
template_helpers.py); the same properties go through moto in
tests/integration/test_sagemaker_control_plane.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.template_helpers import (
    ACCOUNT,
    REGION,
    deployed,
    evaluate,
    lambda_functions,
    of_type,
    one,
    parameters,
    predict_functions,
    references,
    render,
    rule_failures,
    source,
    statements,
)

IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit/sagemaker-endpoint:gpu-v1"
REPOSITORY_ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/onnxkit/sagemaker-endpoint"
MODEL_DATA = "s3://my-models/onnxkit/models/minilm/7/model.tar.gz"
SWITCH = "DeploySageMakerEndpoint"
SAGEMAKER_TYPES = (
    "AWS::SageMaker::",
    "AWS::ApplicationAutoScaling::",
)
SAGEMAKER_NAMES = {
    "SageMakerExecutionRole",
    "SageMakerModel",
    "SageMakerEndpointConfig",
    "SageMakerEndpoint",
    "SageMakerScalableTarget",
    "SageMakerScalingPolicy",
}
# SageMakerMode's resources (test_template_scale.py), each behind a condition that refines
# the switch: async, scale-to-zero, realtime, or "not scale-to-zero".
MODE_NAMES = {
    "SageMakerAsyncSuccessTopic": "SageMakerAsync",
    "SageMakerAsyncErrorTopic": "SageMakerAsync",
    "SageMakerAsyncBacklogScalingPolicy": "SageMakerAsync",
    "SageMakerAsyncWakeUpPolicy": "SageMakerAsync",
    "SageMakerAsyncBacklogWithoutCapacityAlarm": "SageMakerAsync",
    "SageMakerInferenceComponent": "SageMakerScaleToZero",
    "SageMakerCopiesScalableTarget": "SageMakerScaleToZero",
    "SageMakerCopiesScalingPolicy": "SageMakerScaleToZero",
    "SageMakerCopiesWakeUpPolicy": "SageMakerScaleToZero",
    "SageMakerNoCapacityAlarm": "SageMakerScaleToZero",
    "SageMakerScalableTarget": "SageMakerScalesInstances",
    "SageMakerScalingPolicy": "SageMakerRealtime",
}
# Variables both functions carry whatever the backend (see test_template.py).
SHARED_ENV = {
    "ONNXKIT_MODEL_STORE": "s3://{ModelBucket}/onnxkit",
    "ONNXKIT_MODEL_NAME": "digits",
    "ONNXKIT_MODEL_ALIAS": "prod",
    "ONNXKIT_REFRESH_SECONDS": "60",
    "ONNXKIT_CACHE_DIR": "/tmp/onnxkit",
    "ONNXKIT_PAYLOAD_STORE": "s3://{PayloadBucket}",
    "ONNXKIT_UPLOAD_MAX_BYTES": "1073741824",
    "POWERTOOLS_SERVICE_NAME": "onnxkit",
    "POWERTOOLS_METRICS_NAMESPACE": "Onnxkit",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
OFF = [
    pytest.param({}, id="defaults"),
    pytest.param({"DeployZipVariant": "true", "AuthType": "IAM"}, id="zip-iam"),
    pytest.param({"ModelBackend": "lambda", "ModelBucketName": "my-models"}, id="lambda-bucket"),
    # Model data without an image is not an endpoint either.
    pytest.param({"SageMakerModelDataUrl": MODEL_DATA}, id="model-data-only"),
]


def _sagemaker_statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """Statements of every role that grant any sagemaker: action."""
    return [
        statement
        for role in of_type(resources, "AWS::IAM::Role").values()
        for statement in statements(role)
        if any(action.lower().startswith("sagemaker:") for action in statement["Action"])
    ]


def _function_env(resources: dict[str, Any], name: str, params: dict[str, str]) -> dict[str, str]:
    variables = resources[name]["Properties"]["Environment"]["Variables"]
    return {key: render(value, params) for key, value in variables.items()}


# --------------------------------------------------------------------------- the switch
def test_one_condition_built_from_the_image_uri_switches_every_sagemaker_resource() -> None:
    # GIVEN the template as written
    template = source()

    # THEN the switch is "an image URI was given", and nothing else
    assert template["Conditions"][SWITCH] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "SageMakerImageUri"}, ""]}]
    }

    # AND every SageMaker or auto scaling resource, and every resource that names one, hangs
    # off that condition or one that refines it (so nothing half-exists with the switch off)
    switched = {
        name
        for name, resource in template["Resources"].items()
        if resource["Type"].startswith(SAGEMAKER_TYPES) or name.startswith("SageMaker")
        # (the function's provisioned concurrency scales through Application Auto Scaling too)
        if not name.startswith("PredictConcurrency")
    }
    assert switched == SAGEMAKER_NAMES | set(MODE_NAMES)
    for name in switched:
        assert template["Resources"][name].get("Condition") == MODE_NAMES.get(name, SWITCH), name
    assert template["Outputs"]["SageMakerEndpointName"]["Condition"] == SWITCH

    # AND every other SageMaker condition only refines it
    for name in {"UseSageMakerModelData", *MODE_NAMES.values()}:
        assert template["Conditions"][name]["Fn::And"][0] == {"Condition": SWITCH}, name


@pytest.mark.parametrize("overrides", OFF)
def test_without_an_image_there_is_no_trace_of_sagemaker(overrides: dict[str, str]) -> None:
    # GIVEN no SageMakerImageUri
    params = parameters(overrides)
    stack = deployed(**overrides)
    resources = stack["Resources"]

    # THEN no SageMaker or auto scaling resource, no SageMaker role and no endpoint output
    types = {resource["Type"] for resource in resources.values()}
    assert not {t for t in types if t.startswith(SAGEMAKER_TYPES)}
    assert not SAGEMAKER_NAMES & set(resources)
    assert "SageMakerEndpointName" not in stack["Outputs"]

    # AND no role may call SageMaker at all
    assert _sagemaker_statements(resources) == []

    # AND the functions have no endpoint to forward to, only the backend setting
    for name in lambda_functions(resources):
        env = _function_env(resources, name, params)
        assert "ONNXKIT_SAGEMAKER_ENDPOINT" not in env, name
        assert env["ONNXKIT_BACKEND"] == params["ModelBackend"], name

    # AND nothing deployed still points at a SageMaker resource
    for section in ("Resources", "Outputs"):
        for name, body in stack[section].items():
            assert not set(references(body)) & SAGEMAKER_NAMES, f"{section}.{name}"


# --------------------------------------------------------------------------- parameters
def test_sagemaker_parameters_default_to_a_gpu_endpoint_serving_the_function_model() -> None:
    declared = source()["Parameters"]

    # THEN the instance type is a GPU type, and only GPU types are allowed
    instance_type = declared["SageMakerInstanceType"]
    assert instance_type["Default"] == "ml.g5.xlarge"
    allowed = instance_type["AllowedValues"]
    assert instance_type["Default"] in allowed
    assert "ml.g4dn.xlarge" in allowed, "the type moto accepts must stay deployable in tests"
    for value in allowed:
        assert re.fullmatch(r"ml\.(g4dn|g5|g6)\.\d*x?large", value), value

    # AND the counts and scaling target are numbers with sane floors
    for name, default in {
        "SageMakerInitialInstanceCount": 1,
        "SageMakerMinInstances": 1,
        "SageMakerMaxInstances": 4,
        "SageMakerTargetInvocationsPerInstance": 100,
    }.items():
        assert declared[name]["Type"] == "Number", name
        assert declared[name]["Default"] == default, name
        assert declared[name]["MinValue"] == 1, name

    # AND the model and alias follow the registry's naming rule
    assert declared["SageMakerModelName"]["Default"] == ""  # empty: the same as ModelName
    assert declared["SageMakerModelAlias"]["Default"] == "prod"
    assert (
        declared["SageMakerModelAlias"]["AllowedPattern"] == declared["ModelName"]["AllowedPattern"]
    )
    pattern = declared["SageMakerModelName"]["AllowedPattern"]
    for name, accepted in (("", True), ("minilm", True), ("MiniLM", False), ("-x", False)):
        assert (re.fullmatch(pattern, name) is not None) is accepted, name


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("", True),
        (IMAGE, True),
        (f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/onnxkit:1.2.3", True),
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/a/b/c@sha256:{'0' * 64}", True),
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit", False),  # no tag or digest
        ("public.ecr.aws/onnxkit/endpoint:1", False),  # SageMaker pulls from private ECR
        ("docker.io/library/python:3.12", False),
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/Onnxkit:1", False),  # ECR is lower case
    ],
)
def test_image_uri_pattern(uri: str, accepted: bool) -> None:
    pattern = source()["Parameters"]["SageMakerImageUri"]["AllowedPattern"]

    assert (re.fullmatch(pattern, uri) is not None) is accepted


@pytest.mark.parametrize(
    ("overrides", "broken"),
    [
        ({}, []),
        ({"ModelBackend": "lambda"}, []),
        ({"SageMakerImageUri": IMAGE}, []),
        ({"SageMakerImageUri": IMAGE, "ModelBackend": "auto"}, []),
        ({"ModelBackend": "sagemaker"}, ["needs SageMakerImageUri"]),
        ({"ModelBackend": "sagemaker", "SageMakerImageUri": IMAGE}, []),
        (
            {"ModelBackend": "sagemaker", "SageMakerImageUri": IMAGE, "SageMakerModelName": "x"},
            ["set SageMakerModelName to ModelName"],
        ),
        ({"ModelBackend": "sagemaker", "SageMakerModelName": "digits"}, ["SageMakerImageUri"]),
        (
            {
                "ModelBackend": "sagemaker",
                "SageMakerImageUri": IMAGE,
                "SageMakerModelName": "digits",
            },
            [],
        ),
    ],
)
def test_rules_refuse_a_sagemaker_backend_without_its_endpoint(
    overrides: dict[str, str], broken: list[str]
) -> None:
    failures = rule_failures(source(), parameters(overrides))

    assert len(failures) == len(broken), failures
    for failure, expected in zip(failures, broken, strict=True):
        assert expected in failure


# --------------------------------------------------------------------------- functions
@pytest.mark.parametrize("backend", ["auto", "sagemaker"])
def test_functions_get_the_endpoint_name_and_the_backend(backend: str) -> None:
    # GIVEN the GPU path on, with both functions
    overrides = {
        "SageMakerImageUri": IMAGE,
        "DeployZipVariant": "true",
        "ModelBackend": backend,
        "SageMakerModelName": "digits",
    }
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]

    # WHEN their environments are rendered
    for name in ("PredictFunction", "PredictZipFunction"):
        env = _function_env(resources, name, params)

        # THEN each has the shared settings plus the backend and the endpoint's own name
        expected = {
            **SHARED_ENV,
            "ONNXKIT_BACKEND": backend,
            "ONNXKIT_SERVE_OPENAPI": "false",
            "ONNXKIT_SAGEMAKER_ENDPOINT": "{SageMakerEndpoint.EndpointName}",
        }
        if name == "PredictZipFunction":
            expected["ONNXKIT_ROUTE_PREFIX"] = "/zip"
        assert env == expected, name


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_function_role_may_invoke_only_this_endpoint(zip_: str) -> None:
    # GIVEN the GPU path on
    resources = deployed(SageMakerImageUri=IMAGE, DeployZipVariant=zip_)["Resources"]
    roles = {
        fn["Properties"]["Role"]["Fn::GetAtt"][0] for fn in predict_functions(resources).values()
    }
    assert roles == {"PredictFunctionRole"}

    # WHEN the SageMaker statements of every role are collected
    granted = _sagemaker_statements(resources)

    # THEN there is exactly one, in the function role: InvokeEndpoint on the endpoint's ARN
    # (Ref of AWS::SageMaker::Endpoint), no wildcard, no other SageMaker action
    function_statements = statements(resources["PredictFunctionRole"])
    assert [s for s in function_statements if s in granted] == granted
    (statement,) = granted
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["sagemaker:InvokeEndpoint"]
    assert statement["Resource"] == [{"Ref": "SageMakerEndpoint"}]
    assert "Condition" not in statement


# --------------------------------------------------------------------------- the endpoint
def test_endpoint_resources_carry_the_parameter_values() -> None:
    # GIVEN the GPU path on, with every SageMaker knob moved off its default
    overrides = {
        "SageMakerImageUri": IMAGE,
        "SageMakerInstanceType": "ml.g6.2xlarge",
        "SageMakerInitialInstanceCount": "2",
        "SageMakerMinInstances": "1",
        "SageMakerMaxInstances": "6",
        "SageMakerTargetInvocationsPerInstance": "250",
        "SageMakerModelName": "bert-large",
        "SageMakerModelAlias": "canary",
        "ModelBucketName": "my-models",
    }
    params = parameters(overrides)
    stack = deployed(**overrides)
    resources = stack["Resources"]

    # THEN the model runs the image on the execution role, reading the registry itself
    # (so no model data, and the network it needs for S3)
    model_name, model = one(resources, "AWS::SageMaker::Model")
    model_props = evaluate(model["Properties"], params)
    assert model_props == {
        "ExecutionRoleArn": "{SageMakerExecutionRole.Arn}",
        "EnableNetworkIsolation": False,
        "PrimaryContainer": {
            "Image": IMAGE,
            "Environment": {
                "ONNXKIT_MODEL_STORE": "s3://my-models/onnxkit",
                "ONNXKIT_MODEL_NAME": "bert-large",
                "ONNXKIT_MODEL_ALIAS": "canary",
                "ONNXKIT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
            },
        },
    }

    # AND one production variant of that model on the chosen GPU type and count, with no
    # volume key (GPU types have instance storage) and no data capture
    config_name, config = one(resources, "AWS::SageMaker::EndpointConfig")
    config_props = evaluate(config["Properties"], params)
    assert config_props == {
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{{{model_name}.ModelName}}",
                "InstanceType": "ml.g6.2xlarge",
                "InitialInstanceCount": 2,
                "InitialVariantWeight": 1,
            }
        ]
    }

    # AND the endpoint serves that config and keeps auto scaling's count across updates
    endpoint_name, endpoint = one(resources, "AWS::SageMaker::Endpoint")
    assert evaluate(endpoint["Properties"], params) == {
        "EndpointConfigName": f"{{{config_name}.EndpointConfigName}}",
        "RetainAllVariantProperties": True,
    }

    # AND its name is an output
    output = stack["Outputs"]["SageMakerEndpointName"]
    assert output["Value"] == {"Fn::GetAtt": [endpoint_name, "EndpointName"]}


def test_model_data_url_switches_the_container_to_the_artifact_and_isolates_it() -> None:
    # GIVEN a model.tar.gz
    params = parameters({"SageMakerImageUri": IMAGE, "SageMakerModelDataUrl": MODEL_DATA})
    resources = deployed(SageMakerImageUri=IMAGE, SageMakerModelDataUrl=MODEL_DATA)["Resources"]

    # WHEN the model is rendered
    _, model = one(resources, "AWS::SageMaker::Model")
    props = evaluate(model["Properties"], params)

    # THEN SageMaker unpacks it into /opt/ml/model, the container serves that folder, and the
    # container gets no network (it needs none)
    assert props["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert props["PrimaryContainer"]["Environment"]["ONNXKIT_MODEL_DIR"] == "/opt/ml/model"
    assert props["EnableNetworkIsolation"] is True


def test_auto_scaling_tracks_invocations_per_instance_of_the_variant() -> None:
    # GIVEN the GPU path on with its own scaling numbers
    overrides = {
        "SageMakerImageUri": IMAGE,
        "SageMakerMinInstances": "2",
        "SageMakerMaxInstances": "7",
        "SageMakerTargetInvocationsPerInstance": "300",
    }
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    endpoint_name, _ = one(resources, "AWS::SageMaker::Endpoint")
    _, config = one(resources, "AWS::SageMaker::EndpointConfig")
    (variant,) = config["Properties"]["ProductionVariants"]

    # THEN the scalable target is that endpoint's variant's instance count, within the bounds,
    # on Application Auto Scaling's service-linked role
    target_name, target = one(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert evaluate(target["Properties"], params) == {
        "ServiceNamespace": "sagemaker",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "ResourceId": f"endpoint/{{{endpoint_name}.EndpointName}}/variant/{variant['VariantName']}",
        "MinCapacity": 2,
        "MaxCapacity": 7,
    }

    # AND one target-tracking policy keeps invocations per instance at the target
    _, policy = one(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
    props = evaluate(policy["Properties"], params)
    assert props["PolicyType"] == "TargetTrackingScaling"
    assert policy["Properties"]["ScalingTargetId"] == {"Ref": target_name}
    tracking = props["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 300
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert tracking["ScaleOutCooldown"] < tracking["ScaleInCooldown"]


# --------------------------------------------------------------------------- execution role
def _execution_role(overrides: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    resources = deployed(**overrides)["Resources"]
    _, model = one(resources, "AWS::SageMaker::Model")
    role_name = model["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
    role = resources[role_name]
    params = parameters(overrides)
    rendered = [
        {**statement, "Resource": [render(r, params) for r in statement["Resource"]]}
        for statement in statements(role)
    ]
    return role, rendered


def _by_service(rendered: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [s for s in rendered if any(a.startswith(f"{service}:") for a in s["Action"])]


@pytest.mark.parametrize("bucket", ["", "my-models"])
def test_execution_role_is_sagemakers_and_reads_only_the_model_prefix(bucket: str) -> None:
    # GIVEN the endpoint's execution role
    role, rendered = _execution_role({"SageMakerImageUri": IMAGE, "ModelBucketName": bucket})

    # THEN only SageMaker can assume it, and no managed policy widens it
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    assert not role["Properties"].get("ManagedPolicyArns")
    assert all(statement["Effect"] == "Allow" for statement in rendered)
    assert {a.split(":")[0] for s in rendered for a in s["Action"]} == {
        "s3",
        "ecr",
        "logs",
        "cloudwatch",
    }

    # AND S3 access is GetObject under {bucket}/{prefix}/models/{SageMakerModelName}/ only
    (s3,) = _by_service(rendered, "s3")
    assert s3["Action"] == ["s3:GetObject"]
    assert s3["Resource"] == [f"arn:aws:s3:::{bucket or '{ModelBucket}'}/onnxkit/models/digits/*"]


def test_execution_role_also_reads_the_model_data_object_when_given() -> None:
    _, rendered = _execution_role({"SageMakerImageUri": IMAGE, "SageMakerModelDataUrl": MODEL_DATA})

    (s3,) = _by_service(rendered, "s3")
    assert s3["Action"] == ["s3:GetObject"]
    assert s3["Resource"] == [
        "arn:aws:s3:::{ModelBucket}/onnxkit/models/digits/*",
        "arn:aws:s3:::my-models/onnxkit/models/minilm/7/model.tar.gz",
    ]


@pytest.mark.parametrize(
    ("image", "repository_arn"),
    [
        (IMAGE, REPOSITORY_ARN),
        (
            f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit-gpu@sha256:{'ab' * 32}",
            f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/onnxkit-gpu",
        ),
        (
            "210987654321.dkr.ecr.us-east-2.amazonaws.com/team/ml/onnxkit:2024.11-cuda12",
            "arn:aws:ecr:us-east-2:210987654321:repository/team/ml/onnxkit",
        ),
    ],
)
def test_execution_role_pulls_only_from_the_image_repository(
    image: str, repository_arn: str
) -> None:
    # GIVEN an image URI (tagged, by digest, in a nested repository of another account)
    _, rendered = _execution_role({"SageMakerImageUri": image})

    # WHEN the ECR statements are rendered
    ecr = _by_service(rendered, "ecr")

    # THEN layers and manifests come from that repository's ARN alone, and only the
    # authorization token (which has no resource-level permissions) is on "*"
    pull = [s for s in ecr if s["Resource"] != ["*"]]
    token = [s for s in ecr if s["Resource"] == ["*"]]
    assert len(pull) == 1
    assert sorted(pull[0]["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert pull[0]["Resource"] == [repository_arn]
    assert [s["Action"] for s in token] == [["ecr:GetAuthorizationToken"]]


def test_execution_role_writes_only_endpoint_logs_and_metrics() -> None:
    _, rendered = _execution_role({"SageMakerImageUri": IMAGE})

    # THEN logs go to SageMaker's endpoint log groups in this account and region
    (logs,) = _by_service(rendered, "logs")
    assert sorted(logs["Action"]) == [
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:DescribeLogStreams",
        "logs:PutLogEvents",
    ]
    assert logs["Resource"] == [
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/*"
    ]

    # AND metrics (no resource-level permissions) only into SageMaker's namespaces
    (metrics,) = _by_service(rendered, "cloudwatch")
    assert metrics["Action"] == ["cloudwatch:PutMetricData"]
    assert metrics["Resource"] == ["*"]
    assert metrics["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}

    # AND no statement anywhere grants a wildcard action, and "*" resources are the two
    # services without resource-level permissions
    for statement in rendered:
        assert not any("*" in action for action in statement["Action"]), statement
        if "*" in statement["Resource"]:
            assert statement["Action"] in (
                ["ecr:GetAuthorizationToken"],
                ["cloudwatch:PutMetricData"],
            ), statement
