"""Unit tests of template.yaml: what its SAM translation creates, for each parameter set.

No AWS and no SAM CLI: the template is turned into plain CloudFormation in-process, in four
steps, each a stand-in for something that happens at deploy time:

1. ``_apply_language_extensions`` stands in for the ``AWS::LanguageExtensions`` transform, and
   only for what this template uses it for: ``Fn::If`` on conditions built from parameters
   alone (``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``, ``Condition``), with
   ``AWS::NoValue`` removed, before the SAM transform runs. Every other intrinsic is left as it
   is, and a condition that needs more than parameter values raises instead of being guessed.
   The real transform does more (it also resolves Fn::Sub, Fn::Join, ... where it can); this
   template does not rely on that.
2. ``_package`` stands in for ``sam package``: it checks that the local artifact paths exist,
   then replaces them by S3 URIs (zip code, layer) or an ECR image URI (image function).
3. ``samtranslator.translator.transform.transform`` runs the real SAM transform, with a
   managed-policy loader that fails the test if called (the template names no managed
   policies through SAM, so nothing should need IAM's list of them).
4. ``_deployed`` is what CloudFormation would create for those parameters: resources and
   outputs whose Condition is false are dropped, and the ``Fn::If`` that SAM itself emits are
   resolved with the same evaluator.

The sam/cfn-lint/checkov runs live in tests/integration/test_template_tools.py.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO / "template.yaml"
REGION = "eu-west-1"
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "onnxkit",
    "AWS::AccountId": "123456789012",
}
NO_VALUE = {"Ref": "AWS::NoValue"}
API_KEY_TYPES = {
    "AWS::ApiGateway::ApiKey",
    "AWS::ApiGateway::UsagePlan",
    "AWS::ApiGateway::UsagePlanKey",
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
ANY_METHOD = "x-amazon-apigateway-any-method"


# --------------------------------------------------------------------------- helpers
class ConditionError(ValueError):
    """A condition the parameter-only evaluator cannot decide."""


def _evaluate_conditions(
    conditions: Mapping[str, Any], params: Mapping[str, str]
) -> dict[str, bool]:
    """Evaluates every named condition from parameter values alone.

    Raises:
        ConditionError: a condition uses something other than parameters and literals.
    """

    def value(node: Any) -> str:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            name = node["Ref"]
            if name not in params:
                raise ConditionError(f"Ref to {name!r} is not a parameter")
            return str(params[name])
        if isinstance(node, str | int | float) and not isinstance(node, bool):
            return str(node)
        raise ConditionError(f"cannot evaluate {node!r} from parameters")

    def evaluate(node: Any, seen: tuple[str, ...]) -> bool:
        if not (isinstance(node, dict) and len(node) == 1):
            raise ConditionError(f"not a condition function: {node!r}")
        ((fn, args),) = node.items()
        if fn == "Fn::Equals":
            return value(args[0]) == value(args[1])
        if fn == "Fn::Not":
            return not evaluate(args[0], seen)
        if fn == "Fn::And":
            return all(evaluate(arg, seen) for arg in args)
        if fn == "Fn::Or":
            return any(evaluate(arg, seen) for arg in args)
        if fn == "Condition":
            if args in seen:
                raise ConditionError(f"condition cycle through {args!r}")
            return evaluate(conditions[args], (*seen, args))
        raise ConditionError(f"unsupported condition function {fn}")

    return {name: evaluate(body, (name,)) for name, body in conditions.items()}


def _resolve_ifs(node: Any, truth: Mapping[str, bool]) -> Any:
    """Replaces each Fn::If by its chosen branch; AWS::NoValue removes the key or item."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, if_true, if_false = node["Fn::If"]
            return _resolve_ifs(if_true if truth[name] else if_false, truth)
        resolved = {key: _resolve_ifs(item, truth) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item != NO_VALUE}
    if isinstance(node, list):
        items = (_resolve_ifs(item, truth) for item in node)
        return [item for item in items if item != NO_VALUE]
    return node


def _apply_language_extensions(template: dict[str, Any], params: Mapping[str, str]) -> Any:
    """The part of AWS::LanguageExtensions this template needs; see the module docstring."""
    transforms = template["Transform"]
    assert transforms[0] == "AWS::LanguageExtensions", "LanguageExtensions must run first"
    truth = _evaluate_conditions(template.get("Conditions", {}), params)
    expanded = {key: _resolve_ifs(item, truth) for key, item in template.items()}
    expanded["Transform"] = [name for name in transforms if name != "AWS::LanguageExtensions"]
    return expanded


def _package(template: dict[str, Any]) -> dict[str, Any]:
    """Local artifact paths -> S3/ECR URIs, as `sam package` would (after they are checked)."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                metadata = resource["Metadata"]
                context = REPO / metadata["DockerContext"]
                assert (context / metadata["Dockerfile"]).is_file(), name
                props["ImageUri"] = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/onnxkit:{name}"
            else:
                assert (REPO / props["CodeUri"]).is_dir(), name
                props["CodeUri"] = f"s3://artifacts/{name}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            assert (REPO / props["ContentUri"]).is_dir(), name
            props["ContentUri"] = f"s3://artifacts/{name}.zip"
    return template


class _RefusingPolicyLoader:
    """Managed-policy loader that must not be needed (it would call IAM)."""

    def load(self) -> dict[str, str]:
        raise AssertionError("the SAM transform asked for IAM managed policies")


@functools.cache
def _source() -> dict[str, Any]:
    return yaml_parse(TEMPLATE_PATH.read_text())


def _parameters(overrides: Mapping[str, str]) -> dict[str, str]:
    declared = _source()["Parameters"]
    unknown = set(overrides) - set(declared)
    assert not unknown, f"not template parameters: {unknown}"
    values = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    values.update(overrides)
    return values


@functools.cache
def _translate(overrides: frozenset[tuple[str, str]]) -> dict[str, Any]:
    params = _parameters(dict(overrides))
    template = _package(_apply_language_extensions(copy.deepcopy(_source()), params))
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": REGION}):
        return transform(template, {**params, **PSEUDO}, _RefusingPolicyLoader())


def _deployed(**overrides: str) -> dict[str, Any]:
    """Resources and outputs CloudFormation would create for these parameter values."""
    translated = copy.deepcopy(_translate(frozenset(overrides.items())))
    truth = _evaluate_conditions(translated.get("Conditions", {}), _parameters(overrides))

    def kept(section: str) -> dict[str, Any]:
        return {
            name: _resolve_ifs(body, truth)
            for name, body in translated.get(section, {}).items()
            if truth.get(body.get("Condition", ""), True)
        }

    return {"Resources": kept("Resources"), "Outputs": kept("Outputs")}


def _render(node: Any, params: Mapping[str, str]) -> str:
    """Renders Ref/Fn::Sub/Fn::GetAtt to text: parameters by value, resources as {Name}."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and set(node) == {"Ref"}:
        name = node["Ref"]
        return PSEUDO.get(name) or params.get(name) or "{" + name + "}"
    if isinstance(node, dict) and set(node) == {"Fn::GetAtt"}:
        return "{" + ".".join(node["Fn::GetAtt"]) + "}"
    if isinstance(node, dict) and set(node) == {"Fn::Sub"}:
        body = node["Fn::Sub"]
        text, local = (body, {}) if isinstance(body, str) else (body[0], body[1])

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return _render(local[name], params)
            return _render({"Ref": name}, params)

        return re.sub(r"\$\{([^}!]+)\}", substitute, text)
    raise AssertionError(f"cannot render {node!r}")


def _of_type(resources: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return {name: body for name, body in resources.items() if body["Type"] == type_}


def _one(resources: Mapping[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    found = _of_type(resources, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    return next(iter(found.items()))


def _methods(api_body: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in api_body["paths"].items():
        for method, operation in item.items():
            assert method in HTTP_METHODS | {ANY_METHOD}, (path, method)
            yield path, method, operation


def _statements(role: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = []
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            resources = statement["Resource"]
            statements.append(
                {
                    **statement,
                    "Action": [actions] if isinstance(actions, str) else actions,
                    "Resource": resources if isinstance(resources, list) else [resources],
                }
            )
    return statements


def _lambda_functions(resources: Mapping[str, Any]) -> dict[str, Any]:
    return _of_type(resources, "AWS::Lambda::Function")


def _references(node: Any) -> Iterator[str]:
    """Logical names a node points at: Ref, Fn::GetAtt, ${Name} in Fn::Sub, DependsOn."""
    if isinstance(node, list):
        for item in node:
            yield from _references(item)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "Ref" and isinstance(value, str):
            yield value
        elif key == "Fn::GetAtt":
            yield (value[0] if isinstance(value, list) else value).split(".")[0]
        elif key == "Fn::Sub":
            text, local = (value, {}) if isinstance(value, str) else (value[0], value[1])
            for name in re.findall(r"\$\{([^}!][^}]*)\}", text):
                if name not in local:
                    yield name.split(".")[0]
            yield from _references(local)
        elif key == "DependsOn":
            yield from [value] if isinstance(value, str) else value
        else:
            yield from _references(value)


def _dependencies(resources: Mapping[str, Any], name: str) -> set[str]:
    """Every resource that CloudFormation must create before `name`."""
    found: set[str] = set()
    pending = [name]
    while pending:
        for target in _references(resources[pending.pop()]):
            if target in resources and target not in found:
                found.add(target)
                pending.append(target)
    return found


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
        _evaluate_conditions(by_resource, {"ModelBucketName": ""})
    with pytest.raises(ConditionError, match="unsupported"):
        _evaluate_conditions(by_unknown, {})


def test_if_resolution_drops_no_value() -> None:
    node = {
        "Keep": {"Fn::If": ["Yes", "a", "b"]},
        "Drop": {"Fn::If": ["No", "x", NO_VALUE]},
        "List": ["k", {"Fn::If": ["No", "x", NO_VALUE]}],
    }

    assert _resolve_ifs(node, {"Yes": True, "No": False}) == {"Keep": "a", "List": ["k"]}


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    "overrides",
    [*AUTH_AND_ZIP, pytest.param({"ModelBucketName": "my-models"}, id="existing-bucket")],
)
def test_every_reference_resolves(overrides: dict[str, str]) -> None:
    # GIVEN the translated template and what would be deployed from it
    translated = _translate(frozenset(overrides.items()))
    deployed = _deployed(**overrides)
    known = set(translated["Parameters"]) | set(PSEUDO) | {"AWS::NoValue"}

    # THEN every name referenced anywhere is declared (CloudFormation checks this before it
    # evaluates any condition), and every name a deployed resource or output uses is deployed
    for section in ("Resources", "Outputs"):
        for name, body in translated[section].items():
            missing = set(_references(body)) - known - set(translated["Resources"])
            assert not missing, f"{section}.{name} refers to undeclared {missing}"
        for name, body in deployed[section].items():
            missing = set(_references(body)) - known - set(deployed["Resources"])
            assert not missing, f"{section}.{name} refers to {missing}, not deployed here"


# --------------------------------------------------------------------------- parameters
def test_parameters_and_defaults() -> None:
    parameters = _source()["Parameters"]

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
    }
    assert parameters["AuthType"]["AllowedValues"] == ["API_KEY", "IAM"]
    assert parameters["DeployZipVariant"]["AllowedValues"] == ["true", "false"]
    assert (parameters["MemorySize"]["MinValue"], parameters["MemorySize"]["MaxValue"]) == (
        128,
        10240,
    )


def test_transforms_run_language_extensions_before_sam() -> None:
    assert _source()["Transform"] == ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]


# --------------------------------------------------------------------------- functions
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_predict_function_is_a_traced_container_image(overrides: dict[str, str]) -> None:
    resources = _deployed(**overrides)["Resources"]

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
    params = _parameters({"DeployZipVariant": "true", "ModelBucketName": bucket})
    resources = _deployed(DeployZipVariant="true", ModelBucketName=bucket)["Resources"]
    store = f"s3://{bucket or '{ModelBucket}'}/onnxkit"

    # WHEN the environment of both functions is rendered
    for name in ("PredictFunction", "PredictZipFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        env = {key: _render(value, params) for key, value in variables.items()}

        # THEN both carry the shared settings, and only the zip one a route prefix
        expected = {
            "ONNXKIT_MODEL_STORE": store,
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_MODEL_ALIAS": "prod",
            "ONNXKIT_REFRESH_SECONDS": "60",
            "ONNXKIT_CACHE_DIR": "/tmp/onnxkit",
            "POWERTOOLS_SERVICE_NAME": "onnxkit",
            "POWERTOOLS_METRICS_NAMESPACE": "Onnxkit",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        if name == "PredictZipFunction":
            expected["ONNXKIT_ROUTE_PREFIX"] = "/zip"
        assert env == expected, name


@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_functions_log_to_their_own_retained_log_groups(overrides: dict[str, str]) -> None:
    resources = _deployed(**overrides)["Resources"]

    functions = _lambda_functions(resources)
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
    resources = _deployed(DeployZipVariant="true", ReservedConcurrency=reserved)["Resources"]

    for name, function in _lambda_functions(resources).items():
        props = function["Properties"]
        if expected:
            assert props["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}, name
        else:
            assert "ReservedConcurrentExecutions" not in props, name


# --------------------------------------------------------------------------- IAM
@pytest.mark.parametrize("bucket", ["", "my-models"])
@pytest.mark.parametrize("zip_", ["false", "true"])
def test_function_role_reads_only_the_model_prefix(bucket: str, zip_: str) -> None:
    # GIVEN the role of every function
    overrides = {"ModelBucketName": bucket, "DeployZipVariant": zip_}
    params = _parameters(overrides)
    resources = _deployed(**overrides)["Resources"]
    role_names = {
        fn["Properties"]["Role"]["Fn::GetAtt"][0] for fn in _lambda_functions(resources).values()
    }
    assert role_names == {"PredictFunctionRole"}
    role = resources["PredictFunctionRole"]
    statements = _statements(role)

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
    assert all(statement["Effect"] == "Allow" for statement in statements)

    # AND S3 access is s3:GetObject on {bucket}/{prefix}/models/{name}/* and nothing else
    s3 = [s for s in statements if any(a.lower().startswith("s3:") for a in s["Action"])]
    assert len(s3) == 1
    assert s3[0]["Action"] == ["s3:GetObject"]
    arns = [_render(resource, params) for resource in s3[0]["Resource"]]
    assert arns == [f"arn:aws:s3:::{bucket or '{ModelBucket}'}/onnxkit/models/digits/*"]

    # AND no statement grants a wildcard action, and "*" resources are X-Ray's alone
    for statement in statements:
        for action in statement["Action"]:
            assert "*" not in action, statement
        if "*" in statement["Resource"]:
            assert all(a.startswith("xray:") for a in statement["Action"]), statement

    # AND logs go only to the functions' own log groups
    logs = [s for s in statements if any(a.startswith("logs:") for a in s["Action"])]
    assert len(logs) == 1
    assert sorted(logs[0]["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    log_groups = {
        fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        for fn in _lambda_functions(resources).values()
    }
    assert sorted(logs[0]["Resource"], key=str) == sorted(
        ({"Fn::GetAtt": [group, "Arn"]} for group in log_groups), key=str
    )


# --------------------------------------------------------------------------- API
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_rest_api_routes_reach_the_functions_by_proxy(overrides: dict[str, str]) -> None:
    # GIVEN the one REST API
    resources = _deployed(**overrides)["Resources"]
    api_name, api = _one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]
    assert api["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}

    # WHEN its routes are listed
    routes = {(path, method) for path, method, _ in _methods(body)}

    # THEN /v2 and /v2/{proxy+} go to the image function, /zip/... to the zip one if deployed
    expected = {("/v2", "get"), ("/v2/{proxy+}", ANY_METHOD)}
    if overrides["DeployZipVariant"] == "true":
        expected |= {("/zip/v2", "get"), ("/zip/v2/{proxy+}", ANY_METHOD)}
    assert routes == expected
    for path, _, operation in _methods(body):
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy"
        target = "PredictZipFunction" if path.startswith("/zip/") else "PredictFunction"
        assert f"${{{target}.Arn}}" in integration["uri"]["Fn::Sub"], path

    # AND each route may invoke its function, from this API only
    permissions = _of_type(resources, "AWS::Lambda::Permission")
    assert len(permissions) == len(routes)
    for permission in permissions.values():
        source_arn = permission["Properties"]["SourceArn"]["Fn::Sub"]
        assert source_arn[1]["__ApiId__"] == {"Ref": api_name}


@pytest.mark.parametrize("auth", ["API_KEY", "IAM"])
def test_stage_is_prod_traced_logged_and_throttled(auth: str) -> None:
    resources = _deployed(AuthType=auth)["Resources"]

    _, stage = _one(resources, "AWS::ApiGateway::Stage")
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
    resources = _deployed(ConfigureApiGatewayAccount=configure)["Resources"]
    stage_name, _ = _one(resources, "AWS::ApiGateway::Stage")

    # THEN when it does, the role is kept on delete and the logging stage is created after it
    if configure == "true":
        _, account = _one(resources, "AWS::ApiGateway::Account")
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
        assert "ApiGatewayAccount" in _dependencies(resources, stage_name)
    else:
        assert not _of_type(resources, "AWS::ApiGateway::Account")
        assert "ApiGatewayCloudWatchRole" not in resources


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_api_key_auth_guards_every_method(zip_: str) -> None:
    # GIVEN AuthType=API_KEY (the default)
    deployed = _deployed(AuthType="API_KEY", DeployZipVariant=zip_)
    resources = deployed["Resources"]
    api_name, api = _one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]

    # THEN every method needs the key
    for path, method, operation in _methods(body):
        assert operation.get("security") == [{"api_key": []}], (path, method)
    assert body["components"]["securitySchemes"]["api_key"] == {
        "type": "apiKey",
        "name": "x-api-key",
        "in": "header",
    }

    # AND a usage plan with the parameter throttle and a daily quota holds the stack's key
    _, plan = _one(resources, "AWS::ApiGateway::UsagePlan")
    plan_props = plan["Properties"]
    assert plan_props["Throttle"] == {
        "RateLimit": {"Ref": "ThrottleRateLimit"},
        "BurstLimit": {"Ref": "ThrottleBurstLimit"},
    }
    assert plan_props["Quota"] == {"Limit": {"Ref": "QuotaLimit"}, "Period": "DAY"}
    stage_name, _ = _one(resources, "AWS::ApiGateway::Stage")
    assert plan_props["ApiStages"] == [{"ApiId": {"Ref": api_name}, "Stage": {"Ref": stage_name}}]
    key_name, key = _one(resources, "AWS::ApiGateway::ApiKey")
    assert key["Properties"]["Enabled"] is True
    _, plan_key = _one(resources, "AWS::ApiGateway::UsagePlanKey")
    assert plan_key["Properties"]["KeyId"] == {"Ref": key_name}
    assert plan_key["Properties"]["KeyType"] == "API_KEY"

    # AND the key id is an output that says how to read the value
    output = deployed["Outputs"]["ApiKeyId"]
    assert output["Value"] == {"Ref": key_name}
    assert "aws apigateway get-api-key --api-key" in output["Description"]
    assert "--include-value" in output["Description"]


@pytest.mark.parametrize("zip_", ["false", "true"])
def test_iam_auth_signs_every_method_and_creates_no_key(zip_: str) -> None:
    # GIVEN AuthType=IAM
    deployed = _deployed(AuthType="IAM", DeployZipVariant=zip_)
    resources = deployed["Resources"]
    _, api = _one(resources, "AWS::ApiGateway::RestApi")
    body = api["Properties"]["Body"]

    # THEN every method needs SigV4, and API Gateway invokes with its own permission
    # (no caller-credentials pass-through, which would need lambda:InvokeFunction per caller)
    for path, method, operation in _methods(body):
        assert operation.get("security") == [{"AWS_IAM": []}], (path, method)
        assert "credentials" not in operation["x-amazon-apigateway-integration"], path
    schemes = body["components"]["securitySchemes"]
    assert set(schemes) == {"AWS_IAM"}
    assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"

    # AND there is no key, usage plan or key output
    assert not {resource["Type"] for resource in resources.values()} & API_KEY_TYPES
    assert "ApiKeyId" not in deployed["Outputs"]


# --------------------------------------------------------------------------- model bucket
def test_created_model_bucket_is_encrypted_private_versioned_and_tls_only() -> None:
    # GIVEN no bucket name: the stack creates the bucket
    resources = _deployed(ModelBucketName="")["Resources"]
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
    _, policy = _one(resources, "AWS::S3::BucketPolicy")
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
    params = _parameters({"ModelBucketName": "my-models"})
    deployed = _deployed(ModelBucketName="my-models")

    assert not _of_type(deployed["Resources"], "AWS::S3::Bucket")
    assert not _of_type(deployed["Resources"], "AWS::S3::BucketPolicy")
    outputs = {name: _render(o["Value"], params) for name, o in deployed["Outputs"].items()}
    assert outputs["ModelBucket"] == "my-models"
    assert outputs["ModelStore"] == "s3://my-models/onnxkit"


# --------------------------------------------------------------------------- zip variant
@pytest.mark.parametrize("auth", ["API_KEY", "IAM"])
def test_zip_variant_and_layer_only_when_requested(auth: str) -> None:
    # GIVEN the default (no zip variant)
    off = _deployed(AuthType=auth, DeployZipVariant="false")

    # THEN neither the zip function, its layer, nor its log group or output exists
    assert set(_lambda_functions(off["Resources"])) == {"PredictFunction"}
    assert not _of_type(off["Resources"], "AWS::Lambda::LayerVersion")
    assert "PredictZipFunctionLogGroup" not in off["Resources"]
    assert "PredictZipFunctionName" not in off["Outputs"]

    # WHEN DeployZipVariant=true
    on = _deployed(AuthType=auth, DeployZipVariant="true")

    # THEN the zip function runs python3.12 on the onnxkit layer
    zip_function = on["Resources"]["PredictZipFunction"]["Properties"]
    assert zip_function["PackageType"] == "Zip"
    assert zip_function["Runtime"] == "python3.12"
    assert zip_function["Handler"] == "app.lambda_handler"
    layer_name, layer = _one(on["Resources"], "AWS::Lambda::LayerVersion")
    assert layer_name.startswith("OnnxkitLayer")
    assert zip_function["Layers"] == [{"Ref": layer_name}]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert on["Outputs"]["PredictZipFunctionName"]["Value"] == {"Ref": "PredictZipFunction"}


def test_layer_is_built_from_the_package_folder() -> None:
    layer = _source()["Resources"]["OnnxkitLayer"]

    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    assert layer["Properties"]["ContentUri"] == "layers/onnxkit"
    assert (REPO / "layers/onnxkit/requirements.txt").is_file()


def test_layer_requirements_are_the_runtime_set_without_boto3() -> None:
    lines = (REPO / "layers/onnxkit/requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    names = {re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower() for line in requirements}
    assert names == {"aws-lambda-powertools", "numpy", "onnxruntime"}
    assert any(line.startswith("aws-lambda-powertools[tracer]") for line in requirements)


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("overrides", AUTH_AND_ZIP)
def test_outputs(overrides: dict[str, str]) -> None:
    params = _parameters(overrides)
    outputs = _deployed(**overrides)["Outputs"]

    rendered = {name: _render(output["Value"], params) for name, output in outputs.items()}
    expected = {
        "ApiUrl": f"https://{{PredictApi}}.execute-api.{REGION}.amazonaws.com/Prod/",
        "PredictFunctionName": "{PredictFunction}",
        "ModelBucket": "{ModelBucket}",
        "ModelStore": "s3://{ModelBucket}/onnxkit",
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
