"""Unit tests of template.yaml's production options: code rollout, cold-start controls, dashboard.

What CloudFormation gets (translation as in test_template.py, see template_helpers.py) for the
default, SnapStart on, provisioned concurrency on (with and without scaling) and each
deployment type; expected values come from the SAM / CodeDeploy / Lambda documentation
(deployment configuration names, alias metric dimensions, SnapStart's constraints).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.template_helpers import (
    ACCOUNT,
    REGION,
    deployed,
    evaluate,
    of_type,
    one,
    parameters,
    render,
    rule_failures,
    source,
    statements,
)

# The Lambda deployment types SAM documents for DeploymentPreference.Type (each the suffix of
# a predefined CodeDeploy configuration, CodeDeployDefault.Lambda<Type>).
DEPLOYMENT_TYPES = [
    "Canary10Percent5Minutes",
    "Canary10Percent10Minutes",
    "Canary10Percent15Minutes",
    "Canary10Percent30Minutes",
    "Linear10PercentEvery1Minute",
    "Linear10PercentEvery2Minutes",
    "Linear10PercentEvery3Minutes",
    "Linear10PercentEvery10Minutes",
    "AllAtOnce",
]
ALARMS = ["PredictAliasErrorsAlarm", "PredictAliasDurationP99Alarm", "PredictAliasThrottlesAlarm"]
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:onnxkit-alarms"
SNAPSTART = {"SnapStart": "Enabled"}
PROVISIONED = {"ProvisionedConcurrency": "2"}
SCALED = {"ProvisionedConcurrency": "2", "ProvisionedConcurrencyMax": "8"}
VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param(SNAPSTART, id="snapstart"),
    pytest.param(PROVISIONED, id="provisioned"),
    pytest.param(SCALED, id="provisioned-scaled"),
    pytest.param({"DeployZipVariant": "true", "AlarmTopicArn": TOPIC}, id="zip-topic"),
]
# Physical values for rendering ARNs built from the function and its alias.
FUNCTION = "onnxkit-PredictFunction-AbC123"
ATTRIBUTES = {
    "PredictFunction": FUNCTION,
    "PredictFunctionAliaslive": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION}:live",
}


def _version_name(resources: dict[str, Any]) -> str:
    versions = of_type(resources, "AWS::Lambda::Version")
    (name,) = (
        n
        for n, v in versions.items()
        if v["Properties"]["FunctionName"] == {"Ref": "PredictFunction"}
    )
    return name


# --------------------------------------------------------------------------- code rollout
@pytest.mark.parametrize("overrides", VARIANTS)
def test_every_deployment_publishes_a_version_behind_the_live_alias(
    overrides: dict[str, str],
) -> None:
    resources = deployed(**overrides)["Resources"]

    # THEN the image function gets a version and an alias `live` on it
    version_name = _version_name(resources)
    version = resources[version_name]["Properties"]
    assert version["FunctionName"] == {"Ref": "PredictFunction"}
    alias = resources["PredictFunctionAliaslive"]
    assert alias["Properties"]["Name"] == "live"
    assert alias["Properties"]["FunctionVersion"] == {"Fn::GetAtt": [version_name, "Version"]}

    # AND CloudFormation hands alias updates to CodeDeploy, which runs the hook first
    update = alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert update == {
        "ApplicationName": {"Ref": "ServerlessDeploymentApplication"},
        "DeploymentGroupName": {"Ref": "PredictFunctionDeploymentGroup"},
        "BeforeAllowTrafficHook": {"Ref": "PreTrafficHookFunction"},
    }
    _, application = one(resources, "AWS::CodeDeploy::Application")
    assert application["Properties"]["ComputePlatform"] == "Lambda"


@pytest.mark.parametrize("deployment_type", DEPLOYMENT_TYPES)
def test_deployment_type_picks_the_codedeploy_configuration(deployment_type: str) -> None:
    params = parameters({"DeploymentType": deployment_type})
    resources = deployed(DeploymentType=deployment_type)["Resources"]

    _, group = one(resources, "AWS::CodeDeploy::DeploymentGroup")
    props = group["Properties"]
    assert render(props["DeploymentConfigName"], params) == (
        f"CodeDeployDefault.Lambda{deployment_type}"
    )
    assert props["DeploymentStyle"] == {
        "DeploymentType": "BLUE_GREEN",
        "DeploymentOption": "WITH_TRAFFIC_CONTROL",
    }
    # AND any of the three alias alarms stops and rolls back the deployment
    assert props["AlarmConfiguration"] == {
        "Enabled": True,
        "Alarms": [{"Name": {"Ref": name}} for name in ALARMS],
    }
    rollback = props["AutoRollbackConfiguration"]
    assert rollback["Enabled"] is True
    assert {"DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"} <= set(rollback["Events"])
    assert props["ServiceRoleArn"] == {"Fn::GetAtt": ["PredictDeploymentRole", "Arn"]}


def test_deployment_type_parameter_allows_the_documented_types_canary_by_default() -> None:
    spec = source()["Parameters"]["DeploymentType"]

    assert spec["Default"] == "Canary10Percent5Minutes"
    assert sorted(spec["AllowedValues"]) == sorted(DEPLOYMENT_TYPES)


def test_zip_variant_publishes_an_alias_without_a_deployment_group() -> None:
    resources = deployed(DeployZipVariant="true")["Resources"]

    alias = resources["PredictZipFunctionAliaslive"]
    assert alias["Properties"]["Name"] == "live"
    assert "UpdatePolicy" not in alias
    groups = of_type(resources, "AWS::CodeDeploy::DeploymentGroup")
    assert set(groups) == {"PredictFunctionDeploymentGroup"}


# --------------------------------------------------------------------------- alarms
@pytest.mark.parametrize(("topic", "notified"), [("", False), (TOPIC, True)])
def test_alarms_watch_the_live_alias(topic: str, notified: bool) -> None:
    params = parameters({"AlarmTopicArn": topic})
    resources = deployed(AlarmTopicArn=topic)["Resources"]

    found = {}
    for name in ALARMS:
        props = resources[name]["Properties"]
        # THEN each is a Lambda metric of the alias: FunctionName + Resource "name:alias"
        assert props["Namespace"] == "AWS/Lambda"
        dimensions = {
            d["Name"]: render(d["Value"], params, ATTRIBUTES) for d in props["Dimensions"]
        }
        assert dimensions == {"FunctionName": FUNCTION, "Resource": f"{FUNCTION}:live"}
        assert props["TreatMissingData"] == "notBreaching"
        found[props["MetricName"]] = props
        # AND notifies the topic only when one is given
        if notified:
            assert props["AlarmActions"] == [{"Ref": "AlarmTopicArn"}]
            assert props["OKActions"] == [{"Ref": "AlarmTopicArn"}]
        else:
            assert "AlarmActions" not in props
            assert "OKActions" not in props

    assert set(found) == {"Errors", "Duration", "Throttles"}
    duration = found["Duration"]
    assert duration["ExtendedStatistic"] == "p99"
    assert "Statistic" not in duration
    assert evaluate(duration["Threshold"], params) == 1000
    assert duration["ComparisonOperator"] == "GreaterThanThreshold"
    # one crash or timeout is enough: the handler answers its own errors, so Errors counts
    # only what it could not
    errors = found["Errors"]
    assert (errors["Statistic"], errors["Threshold"]) == ("Sum", 1)
    assert errors["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


# --------------------------------------------------------------------------- the hook
def test_pre_traffic_hook_invokes_the_new_version_with_least_privilege() -> None:
    params = parameters({})
    resources = deployed()["Resources"]

    # GIVEN the hook function: a small python3.12 zip function told which version to check
    hook = resources["PreTrafficHookFunction"]["Properties"]
    assert hook["Runtime"] == "python3.12"
    assert hook["Handler"] == "app.lambda_handler"
    assert hook["PackageType"] == "Zip"
    assert hook["MemorySize"] <= 512
    variables = hook["Environment"]["Variables"]
    assert variables["TARGET_VERSION_ARN"] == {"Ref": _version_name(resources)}
    assert render(variables["MODEL_NAME"], params) == "digits"

    # THEN its role may invoke the predict function's versions, report to this stack's
    # deployment groups and write its own log group; nothing else, and never "*"
    role_name = hook["Role"]["Fn::GetAtt"][0]
    role = resources[role_name]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    assert not role["Properties"].get("ManagedPolicyArns")
    granted = {
        action: sorted(render(resource, params) for resource in statement["Resource"])
        for statement in statements(role)
        for action in statement["Action"]
    }
    assert granted == {
        "lambda:InvokeFunction": ["{PredictFunction.Arn}:*"],
        "codedeploy:PutLifecycleEventHookExecutionStatus": [
            f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentgroup:"
            "{ServerlessDeploymentApplication}/*"
        ],
        "logs:CreateLogStream": ["{PreTrafficHookLogGroup.Arn}"],
        "logs:PutLogEvents": ["{PreTrafficHookLogGroup.Arn}"],
    }


def test_codedeploy_role_moves_only_this_alias_reads_only_these_alarms() -> None:
    params = parameters({})
    resources = deployed()["Resources"]

    role = resources["PredictDeploymentRole"]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "codedeploy.amazonaws.com"}
    assert not role["Properties"].get("ManagedPolicyArns")
    assert "CodeDeployServiceRole" not in resources, "SAM's broader default role is not made"
    granted = {
        action: sorted(render(resource, params) for resource in statement["Resource"])
        for statement in statements(role)
        for action in statement["Action"]
    }
    function_arns = ["{PredictFunction.Arn}", "{PredictFunction.Arn}:*"]
    assert granted == {
        "lambda:GetAlias": function_arns,
        "lambda:UpdateAlias": function_arns,
        "lambda:GetProvisionedConcurrencyConfig": function_arns,
        "cloudwatch:DescribeAlarms": sorted(f"{{{name}.Arn}}" for name in ALARMS),
        "lambda:InvokeFunction": ["{PreTrafficHookFunction.Arn}"],
    }


# --------------------------------------------------------------------------- SnapStart / PC
@pytest.mark.parametrize("overrides", VARIANTS)
def test_snapstart_and_provisioned_concurrency_follow_their_parameters(
    overrides: dict[str, str],
) -> None:
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    function = resources["PredictFunction"]["Properties"]
    alias = resources["PredictFunctionAliaslive"]["Properties"]

    # SnapStart: on the image function, for published versions (the only kind it applies to)
    if overrides.get("SnapStart") == "Enabled":
        assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        # Lambda's constraint: no SnapStart with ephemeral storage over 512 MB (the default)
        storage = function.get("EphemeralStorage", {"Size": 512})["Size"]
        assert evaluate(storage, params) <= 512
    else:
        assert "SnapStart" not in function

    # Provisioned concurrency: on the alias, as many environments as asked
    if overrides.get("ProvisionedConcurrency", "0") != "0":
        config = alias["ProvisionedConcurrencyConfig"]
        assert evaluate(config["ProvisionedConcurrentExecutions"], params) == 2
    else:
        assert "ProvisionedConcurrencyConfig" not in alias

    # Scaling: only with a maximum
    targets = of_type(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = of_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
    if "ProvisionedConcurrencyMax" in overrides:
        (target,) = targets.values()
        props = target["Properties"]
        assert props["ServiceNamespace"] == "lambda"
        assert props["ScalableDimension"] == "lambda:function:ProvisionedConcurrency"
        assert render(props["ResourceId"], params, ATTRIBUTES) == f"function:{FUNCTION}:live"
        assert (evaluate(props["MinCapacity"], params), evaluate(props["MaxCapacity"], params)) == (
            2,
            8,
        )
        (policy,) = policies.values()
        tracking = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        assert tracking["PredefinedMetricSpecification"] == {
            "PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"
        }
        assert 0 < tracking["TargetValue"] < 1
    else:
        assert not targets
        assert not policies


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        pytest.param({}, None, id="default"),
        pytest.param(SNAPSTART, None, id="snapstart"),
        pytest.param(PROVISIONED, None, id="provisioned"),
        pytest.param(SCALED, None, id="scaled"),
        pytest.param({**SNAPSTART, **PROVISIONED}, "SnapStart and provisioned", id="both"),
        pytest.param({**SNAPSTART, **SCALED}, "SnapStart and provisioned", id="both-scaled"),
        pytest.param(
            {"ProvisionedConcurrencyMax": "8"}, "set ProvisionedConcurrency", id="max-only"
        ),
    ],
)
def test_rules_refuse_snapstart_with_provisioned_concurrency(
    overrides: dict[str, str], refused: str | None
) -> None:
    failures = rule_failures(source(), parameters(overrides))

    if refused is None:
        assert failures == []
    else:
        (message,) = failures
        assert refused in message


# --------------------------------------------------------------------------- dashboard
def _dashboard(overrides: dict[str, str]) -> dict[str, Any]:
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    _, dashboard = one(resources, "AWS::CloudWatch::Dashboard")
    attributes = {**ATTRIBUTES, **{f"{name}.Arn": f"arn:alarm:{name}" for name in ALARMS}}
    return json.loads(render(dashboard["Properties"]["DashboardBody"], params, attributes))


def test_dashboard_shows_cold_starts_init_latency_and_errors() -> None:
    body = _dashboard({})
    widgets = body["widgets"]
    expressions = [
        item["expression"]
        for widget in widgets
        for row in widget["properties"].get("metrics", [])
        for item in row
        if isinstance(item, dict) and "expression" in item
    ]
    plain = [
        row[:6]
        for widget in widgets
        for row in widget["properties"].get("metrics", [])
        if isinstance(row[0], str)
    ]

    # THEN every SEARCH reads the namespace the function writes to (Powertools' variable)
    namespace = source()["Globals"]["Function"]["Environment"]["Variables"][
        "POWERTOOLS_METRICS_NAMESPACE"
    ]
    for expression in expressions:
        assert expression.startswith("SEARCH("), expression
        assert f"{{{namespace}," in expression or f'Namespace="{namespace}"' in expression
    searched = {name for e in expressions for name in re.findall(r'MetricName="(\w+)"', e)}
    init = {f"Init{step}Ms" for step in ("Imports", "Resolve", "Download", "Verify", "Session")}
    assert searched >= {"ColdStart", "InferenceMs", "ClientErrors", "ServerErrors"} | init
    assert {"InitWarmupMs", "InitTotalMs", "InferenceErrors"} <= searched

    # AND inference latency is p50 and p99, per model version (the version dimension)
    latency = [e for e in expressions if '"InferenceMs"' in e]
    assert {stat for e in latency for stat in re.findall(r"'(p\d+)'", e)} == {"p50", "p99"}
    assert all("version" in e for e in latency)

    # AND API Gateway's 4XX/5XX of this API (its name is the stack's: the body's info.title)
    for metric in ("4XXError", "5XXError"):
        assert ["AWS/ApiGateway", metric, "ApiName", "onnxkit", "Stage", "Prod"] in plain

    # AND the alias's own Lambda metrics and the rollback alarms
    assert ["AWS/Lambda", "Errors", "FunctionName", FUNCTION, "Resource", f"{FUNCTION}:live"] in (
        plain
    )
    (alarms,) = [w for w in widgets if w["type"] == "alarm"]
    assert alarms["properties"]["alarms"] == [f"arn:alarm:{name}" for name in ALARMS]
    assert {w["properties"]["region"] for w in widgets if w["type"] == "metric"} == {REGION}
