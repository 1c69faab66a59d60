"""Unit tests of template.yaml: what its SAM translation creates, for each parameter set.

No AWS and no SAM CLI: tests/unit/template_helpers.py turns the template into plain
CloudFormation in-process (stand-ins for AWS::LanguageExtensions and `sam package`, then the
real SAM transform) and drops what a parameter set's conditions leave out. The GPU SageMaker
path has its own file, test_template_sagemaker.py; the sam/cfn-lint/checkov runs live in
tests/integration/test_template_tools.py.
"""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.unit.template_helpers import (
    ANY_METHOD,
    NO_VALUE,
    PSEUDO,
    REGION,
    REPO,
    ConditionError,
    dependencies,
    deployed,
    evaluate,
    evaluate_conditions,
    lambda_functions,
    methods,
    of_type,
    one,
    parameters,
    predict_functions,
    references,
    render,
    resolve_ifs,
    source,
    statements,
    translate,
)

SAGEMAKER_IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/onnxkit-sagemaker:gpu-v1"
API_KEY_TYPES = {
    "AWS::ApiGateway::ApiKey",
    "AWS::ApiGateway::UsagePlan",
    "AWS::ApiGateway::UsagePlanKey",
}


# The parameter sets every structural test runs against.
AUTH_AND_ZIP = [
    pytest.param({"AuthType": auth, "DeployZipVariant": zip_}, id=f"{auth}-zip_{zip_}")
    for auth in ("API_KEY", "IAM")
    for zip_ in ("false", "true")
]


# --------------------------------------------------------------------------- the stand-ins
def test_condition_evaluator_refuses_what_needs_more_than_parameters() -> None:
    # GIVEN conditions that need a resource, or a function the stand-in does not know
    by_resource = {"C": {"Fn::Equals": [{"Ref": "ModelBucket"}, ""]}}
    by_unknown = {"C": {"Fn::Contains": [["a"], "a"]}}

    # WHEN / THEN the evaluator raises rather than guessing
    with pytest.raises(ConditionError, match="not a parameter"):
        evaluate_conditions(by_resource, {"ModelBucketName": ""})
    with pytest.raises(ConditionError, match="unsupported"):
        evaluate_conditions(by_unknown, {})


def test_if_resolution_drops_no_value() -> None:
    node = {
        "Keep": {"Fn::If": ["Yes", "a", "b"]},
        "Drop": {"Fn::If": ["No", "x", NO_VALUE]},
        "List": ["k", {"Fn::If": ["No", "x", NO_VALUE]}],
    }

    assert resolve_ifs(node, {"Yes": True, "No": False}) == {"Keep": "a", "List": ["k"]}


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    "overrides",
    [
        *AUTH_AND_ZIP,
        pytest.param({"ModelBucketName": "my-models"}, id="existing-bucket"),
        pytest.param({"SageMakerImageUri": SAGEMAKER_IMAGE}, id="sagemaker"),
        pytest.param(
            {
                "SageMakerImageUri": SAGEMAKER_IMAGE,
                "SageMakerModelDataUrl": "s3://my-models/onnxkit/models/minilm/model.tar.gz",
                "ModelBucketName": "my-models",
                "DeployZipVariant": "true",
            },
            id="sagemaker-model-data-zip",
        ),
    ],
)
def test_every_reference_resolves(overrides: dict[str, str]) -> None:
    # GIVEN the translated template and what would be deployed from it
    translated = translate(frozenset(overrides.items()))
    stack = deployed(**overrides)
    known = set(translated["Parameters"]) | set(PSEUDO) | {"AWS::NoValue"}

    # THEN every name referenced anywhere is declared (CloudFormation checks this before it
    # evaluates any condition), and every name a deployed resource or output uses is deployed
    for section in ("Resources", "Outputs"):
        for name, body in translated[section].items():
            missing = set(references(body)) - known - set(translated["Resources"])
            assert not missing, f"{section}.{name} refers to undeclared {missing}"
        for name, body in stack[section].items():
            missing = set(references(body)) - known - set(stack["Resources"])
            assert not missing, f"{section}.{name} refers to {missing}, not deployed here"


# --------------------------------------------------------------------------- parameters
def test_parameters_and_defaults() -> None:
    parameters = source()["Parameters"]

    defaults = {name: str(spec.get("Default")) for name, spec in parameters.items()}
    assert defaults == {
        "ModelBucketName": "",
        "ModelPrefix": "onnxkit",
        "ModelName": "digits",
        "ModelAlias": "prod",
        "ModelRefreshSeconds": "60",
        "MemorySize": "2048",
        "Timeout": "28",
        "AuthType": "API_KEY",
        "ThrottleRateLimit": "50",
        "ThrottleBurstLimit": "100",
        "QuotaLimit": "100000",
        "ReservedConcurrency": "10",
        "DeployZipVariant": "false",
        "LogRetentionDays": "30",
        "ConfigureApiGatewayAccount": "true",
        "ModelBackend": "auto",
        "ExposeOpenApi": "false",
        "EphemeralStorageMB": "512",
        # Many models and payloads (see test_template_scale.py)
        "Models": "",
        "ModelsAllow": "",
        "ModelsMemoryMB": "0",
        "PayloadUploads": "enabled",
        "UploadMaxBytes": "1073741824",
        "PayloadExpiryDays": "1",
        "JobExpiryDays": "7",
        # Production (see test_template_production.py)
        "DeploymentType": "Canary10Percent5Minutes",
        "AlarmTopicArn": "",
        "AlarmDurationP99Ms": "1000",
        "SnapStart": "Disabled",
        "ProvisionedConcurrency": "0",
        "ProvisionedConcurrencyMax": "0",
        # The GPU path, off while the image is empty (see test_template_sagemaker.py)
        "SageMakerImageUri": "",
        "SageMakerMode": "realtime",
        "SageMakerModelName": "",
        "SageMakerModelAlias": "prod",
        "SageMakerModelDataUrl": "",
        "SageMakerInstanceType": "ml.g5.xlarge",
        "SageMakerInitialInstanceCount": "1",
        "SageMakerMinInstances": "1",
        "SageMakerMaxInstances": "4",
        "SageMakerTargetInvocationsPerInstance": "100",
        "AsyncBacklogPerInstanceTarget": "5",
        "AsyncMaxConcurrentInvocationsPerInstance": "4",
        "SageMakerCopyMemoryMB": "4096",
    }
    assert parameters["AuthType"]["AllowedValues"] == ["API_KEY", "IAM"]
    assert parameters["ModelBackend"]["AllowedValues"] == ["auto", "lambda", "sagemaker"]
    assert parameters["DeployZipVariant"]["AllowedValues"] == ["true", "false"]
    assert (parameters["MemorySize"]["MinValue"], parameters["MemorySize"]["MaxValue"]) == (
        128,
        10240,
    )


def test_transforms_run_language_extensions_before_sam() -> None:
    assert source()["Transform"] == ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]


# --------------------------------------------------------------------------- functions
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_predict_function_is_a_traced_container_image(overrides: dict[str, str]) -> None:
    resources = deployed(**overrides)["Resources"]

    function = resources["PredictFunction"]
    assert function["Type"] == "AWS::Lambda::Function"
    props = function["Properties"]
    assert props["PackageType"] == "Image"
    assert "ImageUri" in props["Code"]
    assert "Runtime" not in props
    assert "Layers" not in props, "container-image functions cannot use layers"
    assert props["Architectures"] == ["x86_64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["MemorySize"] == {"Ref": "MemorySize"}
    assert props["Timeout"] == {"Ref": "Timeout"}
    assert function["Metadata"]["Dockerfile"] == "functions/predict/Dockerfile"
    assert function["Metadata"]["DockerContext"] == "."
    assert function["Metadata"]["DockerTag"] == "python3.12-v1"


@pytest.mark.parametrize("bucket", ["", "my-models"])
def test_function_environment(bucket: str) -> None:
    # GIVEN the zip variant on, with a created or an existing bucket
    params = parameters({"DeployZipVariant": "true", "ModelBucketName": bucket})
    resources = deployed(DeployZipVariant="true", ModelBucketName=bucket)["Resources"]
    store = f"s3://{bucket or '{ModelBucket}'}/onnxkit"

    # WHEN the environment of both functions is rendered
    for name in ("PredictFunction", "PredictZipFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        env = {key: render(value, params) for key, value in variables.items()}

        # THEN both carry the shared settings and the payload store, and only the zip one a
        # route prefix (no ONNXKIT_SAGEMAKER_ENDPOINT: there is no endpoint without
        # SageMakerImageUri; no ONNXKIT_MODELS: one model by default)
        expected = {
            "ONNXKIT_MODEL_STORE": store,
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_MODEL_ALIAS": "prod",
            "ONNXKIT_REFRESH_SECONDS": "60",
            "ONNXKIT_CACHE_DIR": "/tmp/onnxkit",
            "ONNXKIT_BACKEND": "auto",
            "ONNXKIT_SERVE_OPENAPI": "false",
            "ONNXKIT_PAYLOAD_STORE": "s3://{PayloadBucket}",
            "ONNXKIT_UPLOAD_MAX_BYTES": "1073741824",
            "POWERTOOLS_SERVICE_NAME": "onnxkit",
            "POWERTOOLS_METRICS_NAMESPACE": "Onnxkit",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        if name == "PredictZipFunction":
            expected["ONNXKIT_ROUTE_PREFIX"] = "/zip"
        assert env == expected, name


@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_functions_log_to_their_own_retained_log_groups(overrides: dict[str, str]) -> None:
    resources = deployed(**overrides)["Resources"]

    functions = lambda_functions(resources)
    assert functions
    groups = set()
    for name, function in functions.items():
        group_ref = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        group = resources[group_ref]
        assert group["Type"] == "AWS::Logs::LogGroup", name
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        groups.add(group_ref)
    assert len(groups) == len(functions), "each function has its own log group"


@pytest.mark.parametrize(("reserved", "expected"), [("10", True), ("0", False)])
def test_reserved_concurrency(reserved: str, expected: bool) -> None:
    resources = deployed(DeployZipVariant="true", ReservedConcurrency=reserved)["Resources"]

    for name, function in predict_functions(resources).items():
        props = function["Properties"]
        if expected:
            assert props["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}, name
        else:
            assert "ReservedConcurrentExecutions" not in props, name
    # the pre-traffic hook runs once per deployment: one environment, or none reserved
    hook = resources["PreTrafficHookFunction"]["Properties"]
    assert hook.get("ReservedConcurrentExecutions") == (1 if expected else None)


# --------------------------------------------------------------------------- IAM
@pytest.mark.parametrize("bucket", ["", "my-models"])
@pytest.mark.parametrize("zip_", ["false", "true"])
def test_function_role_reads_only_the_model_prefix(bucket: str, zip_: str) -> None:
    # GIVEN the role of every function
    overrides = {"ModelBucketName": bucket, "DeployZipVariant": zip_}
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    role_names = {
        fn["Properties"]["Role"]["Fn::GetAtt"][0] for fn in predict_functions(resources).values()
    }
    assert role_names == {"PredictFunctionRole"}
    role = resources["PredictFunctionRole"]
    role_statements = statements(role)

    # THEN only Lambda can assume it, and no managed policy widens it
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    assert not role["Properties"].get("ManagedPolicyArns")
    assert all(statement["Effect"] == "Allow" for statement in role_statements)

    # AND S3 access to the model store is s3:GetObject on {bucket}/{prefix}/models/{name}/*,
    # plus PutObject on the served alias's document alone (aborting a failing model canary),
    # and nothing else (the payload bucket's prefixes: test_template_scale.py)
    s3 = [
        s
        for s in role_statements
        if any(a.lower().startswith("s3:") for a in s["Action"])
        and "PayloadBucket" not in json.dumps(s["Resource"])
    ]
    granted = {
        tuple(s["Action"]): [render(resource, params) for resource in s["Resource"]] for s in s3
    }
    where = f"arn:aws:s3:::{bucket or '{ModelBucket}'}/onnxkit/models/digits"
    assert granted == {
        ("s3:GetObject",): [f"{where}/*"],
        ("s3:PutObject",): [f"{where}/_aliases/prod.json"],
    }

    # AND no statement grants a wildcard action, and "*" resources are X-Ray's alone
    for statement in role_statements:
        for action in statement["Action"]:
            assert "*" not in action, statement
        if "*" in statement["Resource"]:
            assert all(a.startswith("xray:") for a in statement["Action"]), statement

    # AND logs go only to the functions' own log groups
    logs = [s for s in role_statements if any(a.startswith("logs:") for a in s["Action"])]
    assert len(logs) == 1
    assert sorted(logs[0]["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    log_groups = {
        fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        for fn in predict_functions(resources).values()
    }
    assert sorted(logs[0]["Resource"], key=str) == sorted(
        ({"Fn::GetAtt": [group, "Arn"]} for group in log_groups), key=str
    )


# --------------------------------------------------------------------------- API
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_rest_api_routes_reach_the_functions_by_proxy(overrides: dict[str, str]) -> None:
    # GIVEN the one REST API
    resources = deployed(**overrides)["Resources"]
    api_name, api = one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]
    assert api["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}

    # WHEN its routes are listed
    routes = {(path, method) for path, method, _ in methods(body)}

    # THEN /v2 and /v2/{proxy+} go to the image function, /zip/... to the zip one if deployed
    expected = {("/v2", "get"), ("/v2/{proxy+}", ANY_METHOD)}
    if overrides["DeployZipVariant"] == "true":
        expected |= {("/zip/v2", "get"), ("/zip/v2/{proxy+}", ANY_METHOD)}
    assert routes == expected
    # through the function's `live` alias (AutoPublishAlias), never $LATEST
    for path, _, operation in methods(body):
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy"
        target = "PredictZipFunction" if path.startswith("/zip/") else "PredictFunction"
        assert f"/functions/${{{target}Aliaslive}}/" in integration["uri"]["Fn::Sub"], path
        assert resources[f"{target}Aliaslive"]["Properties"]["Name"] == "live"

    # AND each route may invoke its function's alias, from this API only
    permissions = of_type(resources, "AWS::Lambda::Permission")
    assert len(permissions) == len(routes)
    for permission in permissions.values():
        source_arn = permission["Properties"]["SourceArn"]["Fn::Sub"]
        assert source_arn[1]["__ApiId__"] == {"Ref": api_name}
        assert permission["Properties"]["FunctionName"]["Ref"].endswith("Aliaslive")


@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_rest_api_takes_every_media_type_as_binary(overrides: dict[str, str]) -> None:
    # GIVEN the one REST API, with the zip routes on it or not
    _, api = one(deployed(**overrides)["Resources"], "AWS::ApiGateway::RestApi")
    props = api["Properties"]

    # THEN its OpenAPI body, which API Gateway imports, lists */* as the binary media types:
    # every body reaches the functions base64-encoded (tritonclient's binary tensors, sent
    # without Content-Type, too) and every base64 reply goes out as bytes, whatever the Accept
    assert props["Body"]["x-amazon-apigateway-binary-media-types"] == ["*/*"]
    # AND the RestApi property SAM keeps beside it says the same, in SAM's ~1-for-/ spelling
    assert [media.replace("~1", "/") for media in props["BinaryMediaTypes"]] == ["*/*"]


@pytest.mark.parametrize("auth", ["API_KEY", "IAM"])
def test_stage_is_prod_traced_logged_and_throttled(auth: str) -> None:
    resources = deployed(AuthType=auth)["Resources"]

    _, stage = one(resources, "AWS::ApiGateway::Stage")
    props = stage["Properties"]
    assert props["StageName"] == "Prod"
    assert props["TracingEnabled"] is True
    assert props["AccessLogSetting"]["DestinationArn"] == {
        "Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]
    }
    # One JSON object per request, with the request id API Gateway requires in the format
    log_format = props["AccessLogSetting"]["Format"]
    assert "\n" not in log_format
    record = json.loads(re.sub(r"\$context\.[A-Za-z.]+", "x", log_format))
    assert record["requestId"] == "x"
    assert "$context.requestId" in log_format
    access_logs = resources["ApiAccessLogGroup"]["Properties"]
    assert access_logs["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    (settings,) = props["MethodSettings"]
    assert (settings["ResourcePath"], settings["HttpMethod"]) == ("/*", "*")
    assert settings["ThrottlingRateLimit"] == {"Ref": "ThrottleRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ThrottleBurstLimit"}
    # No execution logs (and so no request bodies in logs, nor a log group outside the stack)
    assert settings["LoggingLevel"] == "OFF"
    assert settings["DataTraceEnabled"] is False


@pytest.mark.parametrize("configure", ["true", "false"])
def test_stage_waits_for_the_account_logging_role(configure: str) -> None:
    # GIVEN the stack does (or does not) set API Gateway's account-level CloudWatch role
    resources = deployed(ConfigureApiGatewayAccount=configure)["Resources"]
    stage_name, _ = one(resources, "AWS::ApiGateway::Stage")

    # THEN when it does, the role is kept on delete and the logging stage is created after it
    if configure == "true":
        _, account = one(resources, "AWS::ApiGateway::Account")
        assert account["Properties"]["CloudWatchRoleArn"] == {
            "Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]
        }
        role = resources["ApiGatewayCloudWatchRole"]
        assert role["DeletionPolicy"] == account["DeletionPolicy"] == "Retain"
        assert role["Properties"]["ManagedPolicyArns"] == [
            {
                "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs"
            }
        ]
        assert "ApiGatewayAccount" in dependencies(resources, stage_name)
    else:
        assert not of_type(resources, "AWS::ApiGateway::Account")
        assert "ApiGatewayCloudWatchRole" not in resources


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_api_key_auth_guards_every_method(zip_: str) -> None:
    # GIVEN AuthType=API_KEY (the default)
    stack = deployed(AuthType="API_KEY", DeployZipVariant=zip_)
    resources = stack["Resources"]
    api_name, api = one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]

    # THEN every method needs the key
    for path, method, operation in methods(body):
        assert operation.get("security") == [{"api_key": []}], (path, method)
    assert body["components"]["securitySchemes"]["api_key"] == {
        "type": "apiKey",
        "name": "x-api-key",
        "in": "header",
    }

    # AND a usage plan with the parameter throttle and a daily quota holds the stack's key
    _, plan = one(resources, "AWS::ApiGateway::UsagePlan")
    plan_props = plan["Properties"]
    assert plan_props["Throttle"] == {
        "RateLimit": {"Ref": "ThrottleRateLimit"},
        "BurstLimit": {"Ref": "ThrottleBurstLimit"},
    }
    assert plan_props["Quota"] == {"Limit": {"Ref": "QuotaLimit"}, "Period": "DAY"}
    stage_name, _ = one(resources, "AWS::ApiGateway::Stage")
    assert plan_props["ApiStages"] == [{"ApiId": {"Ref": api_name}, "Stage": {"Ref": stage_name}}]
    key_name, key = one(resources, "AWS::ApiGateway::ApiKey")
    assert key["Properties"]["Enabled"] is True
    _, plan_key = one(resources, "AWS::ApiGateway::UsagePlanKey")
    assert plan_key["Properties"]["KeyId"] == {"Ref": key_name}
    assert plan_key["Properties"]["KeyType"] == "API_KEY"

    # AND the key id is an output that says how to read the value
    output = stack["Outputs"]["ApiKeyId"]
    assert output["Value"] == {"Ref": key_name}
    assert "aws apigateway get-api-key --api-key" in output["Description"]
    assert "--include-value" in output["Description"]


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_iam_auth_signs_every_method_and_creates_no_key(zip_: str) -> None:
    # GIVEN AuthType=IAM
    stack = deployed(AuthType="IAM", DeployZipVariant=zip_)
    resources = stack["Resources"]
    _, api = one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]

    # THEN every method needs SigV4, and API Gateway invokes with its own permission
    # (no caller-credentials pass-through, which would need lambda:InvokeFunction per caller)
    for path, method, operation in methods(body):
        assert operation.get("security") == [{"AWS_IAM": []}], (path, method)
        assert "credentials" not in operation["x-amazon-apigateway-integration"], path
    schemes = body["components"]["securitySchemes"]
    assert set(schemes) == {"AWS_IAM"}
    assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"

    # AND there is no key, usage plan or key output
    assert not {resource["Type"] for resource in resources.values()} & API_KEY_TYPES
    assert "ApiKeyId" not in stack["Outputs"]


# --------------------------------------------------------------------------- model bucket
def test_created_model_bucket_is_encrypted_private_versioned_and_tls_only() -> None:
    # GIVEN no bucket name: the stack creates the bucket
    resources = deployed(ModelBucketName="")["Resources"]
    bucket = resources["ModelBucket"]
    props = bucket["Properties"]

    # THEN it is encrypted by default with KMS (AWS managed key) and a bucket key
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms"}
    assert rule["BucketKeyEnabled"] is True

    # AND versioned, fully private, owner-enforced, and kept when the stack goes
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert bucket["DeletionPolicy"] == "Retain"

    # AND its policy denies every request made without TLS, on the bucket and its objects
    policy = resources["ModelBucketPolicy"]
    assert policy["Properties"]["Bucket"] == {"Ref": "ModelBucket"}
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Principal"] == "*"
    assert deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [
        {"Fn::GetAtt": ["ModelBucket", "Arn"]},
        {"Fn::Sub": "${ModelBucket.Arn}/*"},
    ]


def test_existing_bucket_is_used_not_created() -> None:
    params = parameters({"ModelBucketName": "my-models"})
    stack = deployed(ModelBucketName="my-models")

    # (the payload bucket is the stack's own either way)
    assert set(of_type(stack["Resources"], "AWS::S3::Bucket")) == {"PayloadBucket"}
    assert set(of_type(stack["Resources"], "AWS::S3::BucketPolicy")) == {"PayloadBucketPolicy"}
    outputs = {name: render(o["Value"], params) for name, o in stack["Outputs"].items()}
    assert outputs["ModelBucket"] == "my-models"
    assert outputs["ModelStore"] == "s3://my-models/onnxkit"


# --------------------------------------------------------------------------- zip variant
@pytest.mark.parametrize("auth", ["API_KEY", "IAM"])
def test_zip_variant_and_layer_only_when_requested(auth: str) -> None:
    # GIVEN the default (no zip variant)
    off = deployed(AuthType=auth, DeployZipVariant="false")

    # THEN neither the zip function, its layer, nor its log group or output exists
    assert set(predict_functions(off["Resources"])) == {"PredictFunction"}
    assert not of_type(off["Resources"], "AWS::Lambda::LayerVersion")
    assert "PredictZipFunctionLogGroup" not in off["Resources"]
    assert "PredictZipFunctionName" not in off["Outputs"]

    # WHEN DeployZipVariant=true
    on = deployed(AuthType=auth, DeployZipVariant="true")

    # THEN the zip function runs python3.12 on the onnxkit layer
    zip_function = on["Resources"]["PredictZipFunction"]["Properties"]
    assert zip_function["PackageType"] == "Zip"
    assert zip_function["Runtime"] == "python3.12"
    assert zip_function["Handler"] == "app.lambda_handler"
    layer_name, layer = one(on["Resources"], "AWS::Lambda::LayerVersion")
    assert layer_name.startswith("OnnxkitLayer")
    assert zip_function["Layers"] == [{"Ref": layer_name}]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert on["Outputs"]["PredictZipFunctionName"]["Value"] == {"Ref": "PredictZipFunction"}


def test_layer_is_built_by_its_makefile_from_the_package_folder() -> None:
    layer = source()["Resources"]["OnnxkitLayer"]

    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert layer["Properties"]["ContentUri"] == "layers/onnxkit"
    makefile = (REPO / "layers/onnxkit/Makefile").read_text()
    assert "build-OnnxkitLayer:" in makefile
    # one list of dependencies: the layer's comes from pyproject.toml, there is no other
    assert "[lambda]" in makefile
    assert not (REPO / "layers/onnxkit/requirements.txt").exists()


@pytest.mark.parametrize(("value", "expected"), [(None, "false"), ("true", "true")])
def test_openapi_is_served_through_api_gateway_only_when_asked(
    value: str | None, expected: str
) -> None:
    overrides = {} if value is None else {"ExposeOpenApi": value, "DeployZipVariant": "true"}
    resources = deployed(**overrides)["Resources"]
    params = parameters(overrides)

    for name in ("PredictFunction", "PredictZipFunction"):
        if name not in resources:
            continue
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert str(evaluate(variables["ONNXKIT_SERVE_OPENAPI"], params)).lower() == expected


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_outputs(overrides: dict[str, str]) -> None:
    params = parameters(overrides)
    outputs = deployed(**overrides)["Outputs"]

    rendered = {name: render(output["Value"], params) for name, output in outputs.items()}
    expected = {
        "ApiUrl": f"https://{{PredictApi}}.execute-api.{REGION}.amazonaws.com/Prod/",
        "PredictFunctionName": "{PredictFunction}",
        "PredictFunctionAlias": "{PredictFunctionAliaslive}",
        "DashboardUrl": f"https://{REGION}.console.aws.amazon.com/cloudwatch/home"
        f"?region={REGION}#dashboards:name={{PredictDashboard}}",
        "ModelBucket": "{ModelBucket}",
        "ModelStore": "s3://{ModelBucket}/onnxkit",
        "PayloadBucket": "{PayloadBucket}",
        "PayloadStore": "s3://{PayloadBucket}",
    }
    if overrides["AuthType"] == "API_KEY":
        expected["ApiKeyId"] = "{ApiKey}"
    if overrides["DeployZipVariant"] == "true":
        expected["PredictZipFunctionName"] = "{PredictZipFunction}"
    assert rendered == expected


# --------------------------------------------------------------------------- samconfig
def test_samconfig_defaults() -> None:
    text = (REPO / "samconfig.toml").read_text()
    config = tomllib.loads(text)["default"]

    assert tomllib.loads(text)["version"] == 0.1
    assert config["global"]["parameters"]["stack_name"] == "onnxkit"
    deploy = config["deploy"]["parameters"]
    # Both transforms are macros: CloudFormation needs CAPABILITY_AUTO_EXPAND to run them.
    assert set(deploy["capabilities"].split()) == {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    assert deploy["resolve_s3"] is True
    assert deploy["resolve_image_repos"] is True
    assert deploy["confirm_changeset"] is True
    assert config["validate"]["parameters"]["lint"] is True
    assert config["build"]["parameters"]["cached"] is True
    assert not re.search(r"\b\d{12}\b", text), "no account ids in samconfig.toml"
