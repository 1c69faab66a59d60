"""Unit tests of template.yaml at scale: the payload bucket, many models, SageMakerMode.

Large: a payload bucket (``PayloadUploads``) for bodies past API Gateway's and Lambda's
limits, expired by prefix, which the function role reaches one prefix and one action at a
time. Many: ``Models`` (names or ``*``) behind one function, with /tmp from
``EphemeralStorageMB``. Long: ``SageMakerMode`` shapes the GPU endpoint as ``realtime`` (as
before), ``async`` (asynchronous inference, scaled to and from zero on its backlog) or
``scale-to-zero`` (an inference component scaled to and from zero copies). Translation as in
test_template.py (see template_helpers.py); the functions' rendered environments are also
fed to the runtime's own ``Settings.from_env``, which must accept them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest

from onnxkit.settings import Settings
from tests.unit.template_helpers import (
    ACCOUNT,
    PSEUDO,
    REGION,
    deployed,
    evaluate,
    of_type,
    one,
    parameters,
    predict_functions,
    references,
    render,
    rule_failures,
    source,
    statements,
    translate,
)

IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit/sagemaker-endpoint:gpu-v1"
ASYNC = {"SageMakerImageUri": IMAGE, "SageMakerMode": "async"}
TO_ZERO = {"SageMakerImageUri": IMAGE, "SageMakerMode": "scale-to-zero"}
REALTIME = {"SageMakerImageUri": IMAGE}
MODES = [
    pytest.param(REALTIME, id="realtime"),
    pytest.param(ASYNC, id="async"),
    pytest.param(TO_ZERO, id="scale-to-zero"),
]
# Physical values CloudFormation would hand out, for rendering ARNs, names and environments.
PAYLOADS = "onnxkit-payloadbucket-1x2y3z"
ENDPOINT = "SageMakerEndpoint-AbC123dEf"
STACK_UUID = PSEUDO["AWS::StackId"].rsplit("/", 1)[1]
COMPONENT = f"onnxkit-{STACK_UUID}"
ATTRIBUTES = {
    "ModelBucket": "onnxkit-modelbucket-4a5b6c",
    "PayloadBucket": PAYLOADS,
    "PayloadBucket.Arn": f"arn:aws:s3:::{PAYLOADS}",
    "SageMakerEndpoint": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{ENDPOINT.lower()}",
    "SageMakerEndpoint.EndpointName": ENDPOINT,
    "SageMakerInferenceComponent": (
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:inference-component/{COMPONENT}"
    ),
    "SageMakerAsyncSuccessTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:onnxkit-success-1A",
    "SageMakerAsyncErrorTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:onnxkit-error-2B",
    "SageMakerModel.ModelName": "SageMakerModel-XyZ",
    "SageMakerExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/onnxkit-SageMakerExecutionRole",
    "SageMakerAsyncWakeUpPolicy": "arn:aws:autoscaling:policy/async-from-zero",
    "SageMakerCopiesWakeUpPolicy": "arn:aws:autoscaling:policy/copies-from-zero",
}
PAYLOAD_PREFIXES = ("uploads", "results", "jobs", "async-output", "async-failure")
ASYNC_NAMES = {
    "SageMakerAsyncSuccessTopic",
    "SageMakerAsyncErrorTopic",
    "SageMakerAsyncBacklogScalingPolicy",
    "SageMakerAsyncWakeUpPolicy",
    "SageMakerAsyncBacklogWithoutCapacityAlarm",
}
TO_ZERO_NAMES = {
    "SageMakerInferenceComponent",
    "SageMakerCopiesScalableTarget",
    "SageMakerCopiesScalingPolicy",
    "SageMakerCopiesWakeUpPolicy",
    "SageMakerNoCapacityAlarm",
}
REALTIME_NAMES = {"SageMakerScalableTarget", "SageMakerScalingPolicy"}


def _stack(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    return parameters(overrides), deployed(**overrides)


def _env(resources: dict[str, Any], name: str, params: dict[str, str]) -> dict[str, str]:
    variables = resources[name]["Properties"]["Environment"]["Variables"]
    return {key: render(value, params, ATTRIBUTES) for key, value in variables.items()}


def _grants(statement_list: list[dict[str, Any]], params: dict[str, str]) -> dict[str, set[str]]:
    """Action -> every resource (rendered) some statement allows it on."""
    granted: dict[str, set[str]] = defaultdict(set)
    for statement in statement_list:
        assert statement["Effect"] == "Allow", statement
        for action in statement["Action"]:
            granted[action] |= {render(r, params, ATTRIBUTES) for r in statement["Resource"]}
    return dict(granted)


def _payload_grants(role: dict[str, Any], params: dict[str, str]) -> dict[str, set[str]]:
    """The role's grants on the payload bucket alone."""
    granted = _grants(statements(role), params)
    on_payloads = {
        action: {r for r in resources if r.startswith(f"arn:aws:s3:::{PAYLOADS}")}
        for action, resources in granted.items()
    }
    return {action: found for action, found in on_payloads.items() if found}


def _objects(*prefixes: str) -> set[str]:
    return {f"arn:aws:s3:::{PAYLOADS}/{prefix}/*" for prefix in prefixes}


# --------------------------------------------------------------------------- every variant
@pytest.mark.parametrize(
    "overrides",
    [
        *MODES,
        pytest.param({"PayloadUploads": "disabled"}, id="no-payloads"),
        pytest.param(
            {"Models": "*", "ModelsAllow": "digits,minilm*", "DeployZipVariant": "true"},
            id="every-model",
        ),
    ],
)
def test_every_reference_resolves_and_the_runtime_accepts_the_environment(
    overrides: dict[str, str],
) -> None:
    # GIVEN a variant's translation and what it deploys
    translated = translate(frozenset(overrides.items()))
    params, stack = _stack(overrides)
    known = set(translated["Parameters"]) | set(PSEUDO) | {"AWS::NoValue"}

    # THEN every name a deployed resource or output uses is deployed
    for section in ("Resources", "Outputs"):
        for name, body in stack[section].items():
            missing = set(references(body)) - known - set(stack["Resources"])
            assert not missing, f"{section}.{name} refers to {missing}, not deployed here"

    # AND the runtime's Settings take both functions' environments as they are
    for name in predict_functions(stack["Resources"]):
        settings = Settings.from_env(_env(stack["Resources"], name, params))
        assert settings.ignored_variables == (), name


def test_every_parameter_is_in_a_console_group_once() -> None:
    template = source()
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]

    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])


# --------------------------------------------------------------------------- payload bucket
def test_payload_bucket_is_encrypted_private_and_tls_only() -> None:
    # GIVEN the defaults (PayloadUploads enabled)
    resources = deployed()["Resources"]
    bucket = resources["PayloadBucket"]
    props = bucket["Properties"]

    # THEN it is encrypted like the model bucket: SSE-KMS, AWS managed key, bucket key
    assert props["BucketEncryption"] == resources["ModelBucket"]["Properties"]["BucketEncryption"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule == {
        "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
        "BucketKeyEnabled": True,
    }

    # AND fully private and owner-enforced, not versioned (transient user data; checkov's
    # versioning check is skipped with that reason), deleted with the stack
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert "VersioningConfiguration" not in props
    skips = {s["id"]: s["comment"] for s in bucket["Metadata"]["checkov"]["skip"]}
    assert set(skips) == {"CKV_AWS_18", "CKV_AWS_21"}
    assert "noncurrent" in skips["CKV_AWS_21"]
    assert bucket["DeletionPolicy"] == "Delete"

    # AND browsers may PUT uploads and GET results with presigned URLs from any page
    (cors,) = props["CorsConfiguration"]["CorsRules"]
    assert sorted(cors["AllowedMethods"]) == ["GET", "PUT"]
    assert cors["AllowedOrigins"] == ["*"]
    assert "ETag" in cors["ExposedHeaders"]

    # AND its policy denies every request made without TLS, on the bucket and its objects
    policy = resources["PayloadBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "PayloadBucket"}
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [
        {"Fn::GetAtt": ["PayloadBucket", "Arn"]},
        {"Fn::Sub": "${PayloadBucket.Arn}/*"},
    ]


@pytest.mark.parametrize(("payload_days", "job_days"), [("1", "7"), ("3", "30")])
def test_payloads_expire_by_prefix(payload_days: str, job_days: str) -> None:
    # GIVEN expiry parameters (the defaults, then others)
    overrides = {"PayloadExpiryDays": payload_days, "JobExpiryDays": job_days}
    params, stack = _stack(overrides)
    rules = evaluate(
        stack["Resources"]["PayloadBucket"]["Properties"]["LifecycleConfiguration"]["Rules"],
        params,
    )

    # THEN each prefix expires after its parameter's days, every rule enabled
    assert all(rule["Status"] == "Enabled" for rule in rules)
    expiry = {rule["Prefix"]: rule["ExpirationInDays"] for rule in rules if "Prefix" in rule}
    assert expiry == {
        "uploads/": int(payload_days),
        "results/": int(payload_days),
        "jobs/": int(job_days),
        "async-output/": int(job_days),
        "async-failure/": int(job_days),
    }

    # AND abandoned multipart uploads anywhere in the bucket are aborted after a day
    (whole_bucket,) = (rule for rule in rules if "Prefix" not in rule)
    assert whole_bucket["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert "ExpirationInDays" not in whole_bucket

    # AND the defaults are the documented ones
    declared = source()["Parameters"]
    assert (declared["PayloadExpiryDays"]["Default"], declared["JobExpiryDays"]["Default"]) == (
        1,
        7,
    )


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_functions_get_the_payload_store_and_upload_limit(zip_: str) -> None:
    # GIVEN the payload bucket, with a smaller upload limit
    params, stack = _stack({"DeployZipVariant": zip_, "UploadMaxBytes": "52428800"})

    # THEN both functions name the bucket root (no prefix) and the limit
    for name in predict_functions(stack["Resources"]):
        env = _env(stack["Resources"], name, params)
        assert env["ONNXKIT_PAYLOAD_STORE"] == f"s3://{PAYLOADS}", name
        assert env["ONNXKIT_UPLOAD_MAX_BYTES"] == "52428800", name
    assert source()["Parameters"]["UploadMaxBytes"]["Default"] == 1073741824

    # AND the bucket and the store are outputs
    outputs = {k: render(v["Value"], params, ATTRIBUTES) for k, v in stack["Outputs"].items()}
    assert outputs["PayloadBucket"] == PAYLOADS
    assert outputs["PayloadStore"] == f"s3://{PAYLOADS}"


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_function_role_reaches_the_payload_bucket_one_prefix_at_a_time(zip_: str) -> None:
    # GIVEN the function role with the payload bucket on
    params, stack = _stack({"DeployZipVariant": zip_})
    role = stack["Resources"]["PredictFunctionRole"]

    # WHEN its grants on the payload bucket are collected per action
    granted = _payload_grants(role, params)

    # THEN it reads uploads, results, jobs and the async endpoint's outputs; it writes results
    # and jobs, and uploads only because presigned PUT URLs carry its permissions
    assert granted == {
        "s3:GetObject": _objects(*PAYLOAD_PREFIXES),
        "s3:PutObject": _objects("uploads", "results", "jobs"),
        "s3:ListBucket": {f"arn:aws:s3:::{PAYLOADS}"},
    }

    # AND the uploads PutObject says why it is there
    (sign,) = (s for s in statements(role) if s.get("Sid") == "SignUploadUrls")
    assert sign["Action"] == ["s3:PutObject"]

    # AND it may list only the keys it reads, so that a missing one is 404 and not 403 (AWS
    # evaluates s3:prefix against the requested key for that choice)
    (listing,) = (s for s in statements(role) if s.get("Sid") == "SeeMissingPayloadsAsMissing")
    assert listing["Action"] == ["s3:ListBucket"]
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": ["uploads/*", "jobs/*", "async-output/*", "async-failure/*"]}
    }

    # AND no other statement of the role lists, deletes, uses s3:* or touches the bucket itself
    for statement in statements(role):
        if statement.get("Sid") == "SeeMissingPayloadsAsMissing":
            continue
        rendered = [render(r, params, ATTRIBUTES) for r in statement["Resource"]]
        for action in statement["Action"]:
            assert "*" not in action, statement
            assert not action.startswith(("s3:Delete", "s3:List")), statement
        assert f"arn:aws:s3:::{PAYLOADS}" not in rendered, statement
        assert f"arn:aws:s3:::{PAYLOADS}/*" not in rendered, statement
        if "*" in rendered:
            assert all(a.startswith("xray:") for a in statement["Action"]), statement


def test_payload_uploads_disabled_leaves_no_bucket_variable_or_grant() -> None:
    params, stack = _stack({"PayloadUploads": "disabled", "DeployZipVariant": "true"})
    resources = stack["Resources"]

    assert "PayloadBucket" not in resources
    assert "PayloadBucketPolicy" not in resources
    assert not {"PayloadBucket", "PayloadStore"} & set(stack["Outputs"])
    for name in predict_functions(resources):
        env = _env(resources, name, params)
        assert not {"ONNXKIT_PAYLOAD_STORE", "ONNXKIT_UPLOAD_MAX_BYTES"} & set(env), name
    policies = {p["PolicyName"] for p in resources["PredictFunctionRole"]["Properties"]["Policies"]}
    assert "UsePayloads" not in policies


# --------------------------------------------------------------------------- many models
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, {}, id="one-model"),
        # ModelsAllow and ModelsMemoryMB mean nothing without Models
        pytest.param({"ModelsAllow": "x*", "ModelsMemoryMB": "512"}, {}, id="knobs-only"),
        pytest.param({"Models": "digits,minilm"}, {"ONNXKIT_MODELS": "digits,minilm"}, id="names"),
        pytest.param(
            {"Models": "*", "ModelsAllow": "minilm*,digits", "ModelsMemoryMB": "3072"},
            {
                "ONNXKIT_MODELS": "*",
                "ONNXKIT_MODELS_ALLOW": "minilm*,digits",
                "ONNXKIT_MODELS_MEMORY_MB": "3072",
            },
            id="every-model",
        ),
        # 0 = the runtime's own share: the variable stays unset (the runtime refuses 0)
        pytest.param(
            {"Models": "*", "ModelsMemoryMB": "0"}, {"ONNXKIT_MODELS": "*"}, id="memory-0"
        ),
    ],
)
def test_models_variables_only_when_set(
    overrides: dict[str, str], expected: dict[str, str]
) -> None:
    params, stack = _stack({**overrides, "DeployZipVariant": "true"})

    for name in predict_functions(stack["Resources"]):
        env = _env(stack["Resources"], name, params)
        models = {key: value for key, value in env.items() if key.startswith("ONNXKIT_MODELS")}
        assert models == expected, name
        # the single model stays named: the runtime serves it when ONNXKIT_MODELS is unset
        assert env["ONNXKIT_MODEL_NAME"] == "digits", name


@pytest.mark.parametrize(
    ("models", "served", "lists"),
    [("", "digits", False), ("digits,minilm", "*", True), ("*", "*", True)],
)
def test_function_role_reads_the_served_models_and_lists_only_with_many_models(
    models: str, served: str, lists: bool
) -> None:
    # GIVEN the model bucket's grants for one model, a list of models, or every model
    params, stack = _stack({"Models": models, "PayloadUploads": "disabled"})
    role = stack["Resources"]["PredictFunctionRole"]
    bucket = f"arn:aws:s3:::{ATTRIBUTES['ModelBucket']}"

    # THEN objects are read under models/{name or *}/, the alias documents written there,
    # and ListBucket only with many models (a missing version or alias must read as 404, not
    # 403), on the bucket, for keys under models/ alone
    expected = {
        "s3:GetObject": {f"{bucket}/onnxkit/models/{served}/*"},
        "s3:PutObject": {f"{bucket}/onnxkit/models/{served}/_aliases/prod.json"},
    }
    if lists:
        expected["s3:ListBucket"] = {bucket}
    s3 = [s for s in statements(role) if any(a.startswith("s3:") for a in s["Action"])]
    assert _grants(s3, params) == expected
    listing = [s for s in s3 if "s3:ListBucket" in s["Action"]]
    if lists:
        (statement,) = listing
        assert evaluate(statement["Condition"], params) == {
            "StringLike": {"s3:prefix": "onnxkit/models/*"}
        }
    else:
        assert listing == []


@pytest.mark.parametrize("size", ["512", "4096", "10240"])
def test_ephemeral_storage_follows_its_parameter_on_both_predict_functions(size: str) -> None:
    params, stack = _stack({"EphemeralStorageMB": size, "DeployZipVariant": "true"})
    resources = stack["Resources"]

    functions = predict_functions(resources)
    assert set(functions) == {"PredictFunction", "PredictZipFunction"}
    for name, function in functions.items():
        storage = evaluate(function["Properties"]["EphemeralStorage"], params)
        assert storage == {"Size": int(size)}, name
    # (the pre-traffic hook keeps Lambda's default)
    assert "EphemeralStorage" not in resources["PreTrafficHookFunction"]["Properties"]
    declared = source()["Parameters"]["EphemeralStorageMB"]
    assert (declared["Default"], declared["MinValue"], declared["MaxValue"]) == (512, 512, 10240)


@pytest.mark.parametrize(
    ("models", "accepted"),
    [
        ("", True),
        ("*", True),
        ("digits", True),
        ("digits,minilm-l6.int8", True),
        ("digits, minilm", False),
        ("Digits", False),
        ("*,digits", False),
        ("digits,", False),
    ],
)
def test_models_pattern(models: str, accepted: bool) -> None:
    pattern = source()["Parameters"]["Models"]["AllowedPattern"]

    assert (re.fullmatch(pattern, models) is not None) is accepted


# --------------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        pytest.param({"EphemeralStorageMB": "1024"}, None, id="storage"),
        pytest.param({"SnapStart": "Enabled"}, None, id="snapstart"),
        pytest.param(
            {"SnapStart": "Enabled", "EphemeralStorageMB": "1024"},
            "EphemeralStorageMB to 512",
            id="snapstart-storage",
        ),
        pytest.param(ASYNC, None, id="async"),
        pytest.param(TO_ZERO, None, id="scale-to-zero"),
        pytest.param({"SageMakerMode": "async"}, "set SageMakerImageUri", id="async-no-image"),
        pytest.param(
            {"SageMakerMode": "scale-to-zero"}, "set SageMakerImageUri", id="to-zero-no-image"
        ),
        pytest.param(
            {**ASYNC, "PayloadUploads": "disabled"}, "PayloadUploads", id="async-no-payloads"
        ),
        pytest.param({**TO_ZERO, "PayloadUploads": "disabled"}, None, id="to-zero-no-payloads"),
    ],
)
def test_rules_refuse_what_lambda_or_sagemaker_would(
    overrides: dict[str, str], refused: str | None
) -> None:
    failures = rule_failures(source(), parameters(overrides))

    if refused is None:
        assert failures == []
    else:
        (message,) = failures
        assert refused in message


def test_snapstart_storage_rule_is_shaped_like_the_provisioned_concurrency_one() -> None:
    rules = source()["Rules"]

    rule = rules["SnapStartExcludesLargeEphemeralStorage"]
    condition = rules["SnapStartExcludesProvisionedConcurrency"]["RuleCondition"]
    assert rule["RuleCondition"] == condition
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Equals": [{"Ref": "EphemeralStorageMB"}, "512"]}


# --------------------------------------------------------------------------- SageMakerMode
@pytest.mark.parametrize("overrides", MODES)
def test_each_mode_creates_its_own_resources_only(overrides: dict[str, str]) -> None:
    mode = overrides.get("SageMakerMode", "realtime")
    resources = deployed(**overrides)["Resources"]

    expected = {"realtime": REALTIME_NAMES, "async": ASYNC_NAMES | {"SageMakerScalableTarget"}}
    present = set(resources) & (ASYNC_NAMES | TO_ZERO_NAMES | REALTIME_NAMES)
    assert present == expected.get(mode, TO_ZERO_NAMES)


def test_realtime_mode_keeps_a_floor_of_instances_and_no_mode_variables() -> None:
    params, stack = _stack({**REALTIME, "SageMakerMinInstances": "2", "DeployZipVariant": "true"})
    resources = stack["Resources"]

    target = resources["SageMakerScalableTarget"]["Properties"]
    assert evaluate(target["MinCapacity"], params) == 2
    config = evaluate(resources["SageMakerEndpointConfig"]["Properties"], params, ATTRIBUTES)
    assert set(config) == {"ProductionVariants"}
    for name in predict_functions(resources):
        env = _env(resources, name, params)
        assert "ONNXKIT_SAGEMAKER_MODE" not in env
        assert "ONNXKIT_SAGEMAKER_INFERENCE_COMPONENT" not in env


# ---- async
def test_async_endpoint_writes_to_the_payload_bucket_and_tells_two_encrypted_topics() -> None:
    # GIVEN async mode with its own client concurrency
    params, stack = _stack({**ASYNC, "AsyncMaxConcurrentInvocationsPerInstance": "2"})
    resources = stack["Resources"]

    # WHEN the endpoint config is rendered
    config = evaluate(resources["SageMakerEndpointConfig"]["Properties"], params, ATTRIBUTES)

    # THEN the same single-model variant, plus outputs and failures under the payload
    # bucket's async prefixes, and a success and an error topic
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == ATTRIBUTES["SageMakerModel.ModelName"]
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {
            "S3OutputPath": f"s3://{PAYLOADS}/async-output",
            "S3FailurePath": f"s3://{PAYLOADS}/async-failure",
            "NotificationConfig": {
                "SuccessTopic": ATTRIBUTES["SageMakerAsyncSuccessTopic"],
                "ErrorTopic": ATTRIBUTES["SageMakerAsyncErrorTopic"],
            },
        },
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    }
    assert "ExecutionRoleArn" not in config

    # AND both topics are encrypted (AWS managed key) and are outputs
    topics = of_type(resources, "AWS::SNS::Topic")
    assert set(topics) == {"SageMakerAsyncSuccessTopic", "SageMakerAsyncErrorTopic"}
    for topic in topics.values():
        assert topic["Properties"]["KmsMasterKeyId"] == "alias/aws/sns"
    outputs = stack["Outputs"]
    assert outputs["SageMakerAsyncSuccessTopicArn"]["Value"] == {
        "Ref": "SageMakerAsyncSuccessTopic"
    }
    assert outputs["SageMakerAsyncErrorTopicArn"]["Value"] == {"Ref": "SageMakerAsyncErrorTopic"}


def test_async_endpoint_scales_on_its_backlog_down_to_zero_and_back() -> None:
    # GIVEN async mode with its own backlog target
    params, stack = _stack({**ASYNC, "AsyncBacklogPerInstanceTarget": "12"})
    resources = stack["Resources"]

    # THEN the variant's instance count is the scalable target, with a floor of 0
    targets = of_type(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert set(targets) == {"SageMakerScalableTarget"}
    target = evaluate(targets["SageMakerScalableTarget"]["Properties"], params, ATTRIBUTES)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["ResourceId"] == f"endpoint/{ENDPOINT}/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 4)

    # AND target tracking keeps ApproximateBacklogSizePerInstance (endpoint average) at 12
    policies = of_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert set(policies) == {"SageMakerAsyncBacklogScalingPolicy", "SageMakerAsyncWakeUpPolicy"}
    for policy in policies.values():
        assert policy["Properties"]["ScalingTargetId"] == {"Ref": "SageMakerScalableTarget"}
    tracking = evaluate(
        policies["SageMakerAsyncBacklogScalingPolicy"]["Properties"], params, ATTRIBUTES
    )
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 12
    assert config["CustomizedMetricSpecification"] == {
        "Namespace": "AWS/SageMaker",
        "MetricName": "ApproximateBacklogSizePerInstance",
        "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT}],
        "Statistic": "Average",
    }

    # AND a step policy adds one instance whenever the alarm on HasBacklogWithoutCapacity
    # fires (a waiting request at 0 instances), AWS's recipe for scaling from zero
    step = policies["SageMakerAsyncWakeUpPolicy"]["Properties"]
    assert step["PolicyType"] == "StepScaling"
    assert step["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}
    ]
    alarm = evaluate(
        resources["SageMakerAsyncBacklogWithoutCapacityAlarm"]["Properties"], params, ATTRIBUTES
    )
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        "AWS/SageMaker",
        "HasBacklogWithoutCapacity",
    )
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": ENDPOINT}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["EvaluationPeriods"] >= 1
    assert alarm["AlarmActions"] == [ATTRIBUTES["SageMakerAsyncWakeUpPolicy"]]


def test_async_roles_and_environment() -> None:
    params, stack = _stack({**ASYNC, "DeployZipVariant": "true"})
    resources = stack["Resources"]

    # THEN the functions know the mode, and may only InvokeEndpointAsync this endpoint
    for name in predict_functions(resources):
        env = _env(resources, name, params)
        assert env["ONNXKIT_SAGEMAKER_MODE"] == "async", name
        assert env["ONNXKIT_SAGEMAKER_ENDPOINT"] == ENDPOINT, name
        assert "ONNXKIT_SAGEMAKER_INFERENCE_COMPONENT" not in env, name
    function_role = resources["PredictFunctionRole"]
    sagemaker = [s for s in statements(function_role) if s["Action"][0].startswith("sagemaker:")]
    assert _grants(sagemaker, params) == {
        "sagemaker:InvokeEndpointAsync": {ATTRIBUTES["SageMakerEndpoint"]}
    }

    # AND SageMaker's role reads job inputs and uploads, writes outputs and failures, and
    # publishes to the two topics only (besides its model, image, logs and metrics)
    execution_role = resources["SageMakerExecutionRole"]
    assert _payload_grants(execution_role, params) == {
        "s3:GetObject": _objects("jobs", "uploads"),
        "s3:PutObject": _objects("async-output", "async-failure"),
    }
    granted = _grants(statements(execution_role), params)
    assert granted["sns:Publish"] == {
        ATTRIBUTES["SageMakerAsyncSuccessTopic"],
        ATTRIBUTES["SageMakerAsyncErrorTopic"],
    }
    assert {a.split(":")[0] for a in granted} == {"s3", "ecr", "logs", "cloudwatch", "sns"}


# ---- scale-to-zero
def test_scale_to_zero_hosts_the_model_as_an_inference_component() -> None:
    # GIVEN scale-to-zero with its own bounds and memory
    overrides = {**TO_ZERO, "SageMakerMaxInstances": "3", "SageMakerCopyMemoryMB": "8192"}
    params, stack = _stack(overrides)
    resources = stack["Resources"]

    # THEN the endpoint config runs on the execution role with managed instance scaling
    # down to 0 instances, least-outstanding-requests routing, and names no model
    config = evaluate(resources["SageMakerEndpointConfig"]["Properties"], params, ATTRIBUTES)
    assert config == {
        "ExecutionRoleArn": ATTRIBUTES["SageMakerExecutionRole.Arn"],
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "InstanceType": "ml.g5.xlarge",
                "InitialInstanceCount": 1,
                "InitialVariantWeight": 1,
                "ManagedInstanceScaling": {
                    "Status": "ENABLED",
                    "MinInstanceCount": 0,
                    "MaxInstanceCount": 3,
                },
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
            }
        ],
    }

    # AND one inference component on that endpoint's variant runs the model: one GPU, the
    # memory asked for, one copy to start with
    _, component = one(resources, "AWS::SageMaker::InferenceComponent")
    props = evaluate(component["Properties"], params, ATTRIBUTES)
    assert props == {
        "InferenceComponentName": COMPONENT,
        "EndpointName": ENDPOINT,
        "VariantName": "AllTraffic",
        "Specification": {
            "ModelName": ATTRIBUTES["SageMakerModel.ModelName"],
            "ComputeResourceRequirements": {
                "MinMemoryRequiredInMb": 8192,
                "NumberOfAcceleratorDevicesRequired": 1,
            },
        },
        "RuntimeConfig": {"CopyCount": 1},
    }

    # AND its name is one the runtime and SageMaker accept (at most 63, letters/digits/-)
    assert re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}", COMPONENT)


def test_scale_to_zero_scales_copies_to_zero_and_back() -> None:
    params, stack = _stack({**TO_ZERO, "SageMakerTargetInvocationsPerInstance": "40"})
    resources = stack["Resources"]

    # THEN the only scalable target is the component's copy count, with a floor of 0
    _, target = one(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert evaluate(target["Properties"], params, ATTRIBUTES) == {
        "ServiceNamespace": "sagemaker",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
        "ResourceId": f"inference-component/{COMPONENT}",
        "MinCapacity": 0,
        "MaxCapacity": 4,
    }

    # AND target tracking on invocations per copy scales them, in to zero when idle
    policies = of_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert set(policies) == {"SageMakerCopiesScalingPolicy", "SageMakerCopiesWakeUpPolicy"}
    for policy in policies.values():
        assert policy["Properties"]["ScalingTargetId"] == {"Ref": "SageMakerCopiesScalableTarget"}
    tracking = evaluate(policies["SageMakerCopiesScalingPolicy"]["Properties"], params)
    config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 40
    assert config["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
    }

    # AND a request that finds no copy (NoCapacityInvocationFailures) adds one
    step = policies["SageMakerCopiesWakeUpPolicy"]["Properties"]
    assert step["PolicyType"] == "StepScaling"
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}
    ]
    alarm = evaluate(resources["SageMakerNoCapacityAlarm"]["Properties"], params, ATTRIBUTES)
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        "AWS/SageMaker",
        "NoCapacityInvocationFailures",
    )
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": COMPONENT}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert alarm["AlarmActions"] == [ATTRIBUTES["SageMakerCopiesWakeUpPolicy"]]

    # AND nothing scales the variant's instances directly (managed instance scaling does)
    assert "SageMakerScalableTarget" not in resources


def test_scale_to_zero_roles_and_environment() -> None:
    params, stack = _stack({**TO_ZERO, "DeployZipVariant": "true"})
    resources = stack["Resources"]

    # THEN the functions name the component (and stay in the default realtime mode)
    for name in predict_functions(resources):
        env = _env(resources, name, params)
        assert env["ONNXKIT_SAGEMAKER_INFERENCE_COMPONENT"] == COMPONENT, name
        assert env["ONNXKIT_SAGEMAKER_ENDPOINT"] == ENDPOINT, name
        assert "ONNXKIT_SAGEMAKER_MODE" not in env, name
    assert render(
        stack["Outputs"]["SageMakerInferenceComponentName"]["Value"], params, ATTRIBUTES
    ) == (COMPONENT)

    # AND may InvokeEndpoint on the endpoint and the component, nothing else of SageMaker
    function_role = resources["PredictFunctionRole"]
    sagemaker = [s for s in statements(function_role) if s["Action"][0].startswith("sagemaker:")]
    assert _grants(sagemaker, params) == {
        "sagemaker:InvokeEndpoint": {
            ATTRIBUTES["SageMakerEndpoint"],
            ATTRIBUTES["SageMakerInferenceComponent"],
        }
    }

    # AND SageMaker's role gets nothing of the payload bucket or SNS in this mode
    execution_role = resources["SageMakerExecutionRole"]
    assert _payload_grants(execution_role, params) == {}
    assert "sns:Publish" not in _grants(statements(execution_role), params)


@pytest.mark.parametrize(("models", "many"), [("", False), ("digits,minilm", True), ("*", True)])
def test_the_endpoint_serves_the_same_models_and_may_read_and_list_them(
    models: str, many: bool
) -> None:
    # GIVEN a real-time endpoint, with one model or with Models
    params, stack = _stack({**REALTIME, "Models": models, "ModelsAllow": "d*" if many else ""})
    resources = stack["Resources"]
    container = resources["SageMakerModel"]["Properties"]["PrimaryContainer"]
    env = {k: render(v, params, ATTRIBUTES) for k, v in container["Environment"].items()}
    role = resources["SageMakerExecutionRole"]
    bucket = f"arn:aws:s3:::{ATTRIBUTES['ModelBucket']}"
    s3 = [s for s in statements(role) if any(a.startswith("s3:") for a in s["Action"])]
    grants = _grants(s3, params)

    # THEN the container gets the same list and allow-list, reads every model's objects and
    # may list the models' prefix; with one model, only that model and no listing
    if many:
        assert env["ONNXKIT_MODELS"] == models
        assert env["ONNXKIT_MODELS_ALLOW"] == "d*"
        assert grants["s3:GetObject"] == {f"{bucket}/onnxkit/models/*/*"}
        assert grants["s3:ListBucket"] == {bucket}
    else:
        assert "ONNXKIT_MODELS" not in env
        assert grants["s3:GetObject"] == {f"{bucket}/onnxkit/models/digits/*"}
        assert "s3:ListBucket" not in grants
