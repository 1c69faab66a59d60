"""The template's SageMaker resources, created through the real APIs' shapes on moto.

CloudFormation is not run (moto does not run the SAM transform): the properties the
translated template would hand to each resource provider are computed in-process (see
tests/unit/template_helpers.py) and sent with boto3 to moto's in-process mock: the execution
role and the function's InvokeEndpoint policy to IAM (moto validates policy documents), then
the model, endpoint config and endpoint to SageMaker, then the scalable target and policy to
Application Auto Scaling. botocore validates every request against the service model, so a
property with a wrong name, shape or type fails here before it fails in a deployment.

The instance type is moto's: it rejects the template's default ml.g5.xlarge and accepts
ml.g4dn.xlarge, which the template allows too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.template_helpers import (
    ACCOUNT,
    REGION,
    deployed,
    evaluate,
    one,
    parameters,
)

pytestmark = pytest.mark.integration

MOTO_INSTANCE_TYPE = "ml.g4dn.xlarge"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit/sagemaker-endpoint:gpu-v1"
BUCKET = "onnxkit-models"
MODEL_DATA = f"s3://{BUCKET}/onnxkit/models/minilm/3/model.tar.gz"
# Names CloudFormation would generate for the resources that have none in the template.
PHYSICAL_NAMES = {
    "SageMakerExecutionRole": "onnxkit-SageMakerExecutionRole-1A2B3C",
    "PredictFunctionRole": "onnxkit-PredictFunctionRole-4D5E6F",
    "SageMakerModel": "SageMakerModel-7G8H9I",
    "SageMakerEndpointConfig": "SageMakerEndpointConfig-J1K2L3",
    "SageMakerEndpoint": "SageMakerEndpoint-M4N5O6",
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's in-process AWS, started before any client, with fake credentials."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    from moto import mock_aws

    with mock_aws():
        import boto3

        yield boto3.session.Session(region_name=REGION)


def _create_role(
    iam: Any,
    resources: dict[str, Any],
    name: str,
    params: dict[str, str],
    attributes: dict[str, Any],
) -> str:
    """Creates a template role (trust policy and inline policies) in IAM; returns its ARN."""
    props = evaluate(resources[name]["Properties"], params, attributes)
    role = iam.create_role(
        RoleName=PHYSICAL_NAMES[name],
        AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]),
    )["Role"]
    for policy in props.get("Policies", []):
        iam.put_role_policy(
            RoleName=PHYSICAL_NAMES[name],
            PolicyName=policy["PolicyName"],
            PolicyDocument=json.dumps(policy["PolicyDocument"]),
        )
    return str(role["Arn"])


@pytest.mark.parametrize("model_data", ["", MODEL_DATA], ids=["registry", "model-data"])
def test_endpoint_is_created_in_service_and_its_config_round_trips(
    aws: Any, model_data: str
) -> None:
    # GIVEN the translated template with the GPU path on, on an instance type moto knows
    overrides = {
        "SageMakerImageUri": IMAGE,
        "SageMakerInstanceType": MOTO_INSTANCE_TYPE,
        "SageMakerInitialInstanceCount": "2",
        "ModelBucketName": BUCKET,
        "SageMakerModelDataUrl": model_data,
    }
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    attributes: dict[str, Any] = {}
    iam = aws.client("iam")
    sagemaker = aws.client("sagemaker")

    # WHEN the execution role, model, endpoint config and endpoint are created from the
    # properties the template gives each, in CloudFormation's dependency order
    role_arn = _create_role(iam, resources, "SageMakerExecutionRole", params, attributes)
    attributes["SageMakerExecutionRole.Arn"] = role_arn

    model = evaluate(resources["SageMakerModel"]["Properties"], params, attributes)
    model_name = PHYSICAL_NAMES["SageMakerModel"]
    sagemaker.create_model(ModelName=model_name, **model)
    attributes["SageMakerModel.ModelName"] = model_name

    config = evaluate(resources["SageMakerEndpointConfig"]["Properties"], params, attributes)
    config_name = PHYSICAL_NAMES["SageMakerEndpointConfig"]
    sagemaker.create_endpoint_config(EndpointConfigName=config_name, **config)
    attributes["SageMakerEndpointConfig.EndpointConfigName"] = config_name

    endpoint = evaluate(resources["SageMakerEndpoint"]["Properties"], params, attributes)
    # Only for updates: CloudFormation's own property, not a CreateEndpoint parameter.
    assert endpoint.pop("RetainAllVariantProperties") is True
    endpoint_name = PHYSICAL_NAMES["SageMakerEndpoint"]
    sagemaker.create_endpoint(EndpointName=endpoint_name, **endpoint)

    # THEN the endpoint is in service on that config
    described = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == config_name

    # AND the config is what the parameters ask for: one GPU variant of the model, all traffic
    read_config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    (variant,) = read_config["ProductionVariants"]
    expected_variant = {
        "VariantName": "AllTraffic",
        "ModelName": model_name,
        "InstanceType": MOTO_INSTANCE_TYPE,
        "InitialInstanceCount": 2,
        "InitialVariantWeight": 1.0,
    }
    assert {key: variant[key] for key in expected_variant} == expected_variant

    # AND so is the model: the image, the role, the registry settings (SageMakerModelName
    # empty: ModelName), the GPU provider first, and the model data when given
    read_model = sagemaker.describe_model(ModelName=model_name)
    assert read_model["ExecutionRoleArn"] == role_arn
    container = read_model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    expected_environment = {
        "ONNXKIT_MODEL_STORE": f"s3://{BUCKET}/onnxkit",
        "ONNXKIT_MODEL_NAME": "digits",
        "ONNXKIT_MODEL_ALIAS": "prod",
        "ONNXKIT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
    }
    if model_data:
        expected_environment["ONNXKIT_MODEL_DIR"] = "/opt/ml/model"
        assert container["ModelDataUrl"] == model_data
    else:
        assert "ModelDataUrl" not in container
    assert container["Environment"] == expected_environment
    # moto stores no EnableNetworkIsolation (it reads back False): check what was sent, which
    # botocore validated as the boolean the API wants.
    assert model["EnableNetworkIsolation"] is bool(model_data)

    # AND the function role's InvokeEndpoint statement names exactly this endpoint's ARN
    attributes["SageMakerEndpoint"] = described["EndpointArn"]
    attributes["SageMakerEndpoint.EndpointName"] = endpoint_name
    logs = aws.client("logs")
    log_group = evaluate(resources["PredictFunctionLogGroup"]["Properties"], params)
    logs.create_log_group(logGroupName=log_group["LogGroupName"])
    (created,) = logs.describe_log_groups(logGroupNamePrefix=log_group["LogGroupName"])["logGroups"]
    attributes["PredictFunctionLogGroup.Arn"] = created["arn"]
    attributes["PayloadBucket.Arn"] = "arn:aws:s3:::onnxkit-payloadbucket-p7q8r9"
    _create_role(iam, resources, "PredictFunctionRole", params, attributes)
    policy = iam.get_role_policy(
        RoleName=PHYSICAL_NAMES["PredictFunctionRole"], PolicyName="InvokeSageMakerEndpoint"
    )["PolicyDocument"]
    (statement,) = policy["Statement"]
    invoke_resource = evaluate(statement["Resource"], params, attributes)
    # (the ARN as the service reports it: real SageMaker lower-cases the name in it, moto not)
    assert invoke_resource == [described["EndpointArn"]]


def test_scalable_target_and_policy_register_with_application_auto_scaling(aws: Any) -> None:
    # GIVEN an endpoint created from the template's properties (as above, condensed)
    overrides = {
        "SageMakerImageUri": IMAGE,
        "SageMakerInstanceType": MOTO_INSTANCE_TYPE,
        "SageMakerMinInstances": "1",
        "SageMakerMaxInstances": "5",
        "SageMakerTargetInvocationsPerInstance": "120",
    }
    params = parameters(overrides)
    resources = deployed(**overrides)["Resources"]
    sagemaker = aws.client("sagemaker")
    endpoint_name = PHYSICAL_NAMES["SageMakerEndpoint"]
    attributes = {
        "SageMakerExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/sagemaker-execution",
        "SageMakerModel.ModelName": PHYSICAL_NAMES["SageMakerModel"],
        "SageMakerEndpointConfig.EndpointConfigName": PHYSICAL_NAMES["SageMakerEndpointConfig"],
        "SageMakerEndpoint.EndpointName": endpoint_name,
    }
    sagemaker.create_model(
        ModelName=PHYSICAL_NAMES["SageMakerModel"],
        **evaluate(resources["SageMakerModel"]["Properties"], params, attributes),
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName=PHYSICAL_NAMES["SageMakerEndpointConfig"],
        **evaluate(resources["SageMakerEndpointConfig"]["Properties"], params, attributes),
    )
    sagemaker.create_endpoint(
        EndpointName=endpoint_name,
        EndpointConfigName=PHYSICAL_NAMES["SageMakerEndpointConfig"],
    )
    autoscaling = aws.client("application-autoscaling")

    # WHEN the scalable target and the scaling policy are registered from their properties
    target_name, target = one(resources, "AWS::ApplicationAutoScaling::ScalableTarget")
    target_props = evaluate(target["Properties"], params, attributes)
    autoscaling.register_scalable_target(**target_props)
    _, policy = one(resources, "AWS::ApplicationAutoScaling::ScalingPolicy")
    policy_props = evaluate(policy["Properties"], params, attributes)
    # ScalingTargetId is CloudFormation's link to the target; the API names the target itself.
    assert policy["Properties"]["ScalingTargetId"] == {"Ref": target_name}
    del policy_props["ScalingTargetId"]
    autoscaling.put_scaling_policy(
        ServiceNamespace=target_props["ServiceNamespace"],
        ResourceId=target_props["ResourceId"],
        ScalableDimension=target_props["ScalableDimension"],
        **policy_props,
    )

    # THEN the target is the endpoint's variant, within the parameter bounds
    (registered,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"
    ]
    (variant,) = sagemaker.describe_endpoint(EndpointName=endpoint_name)["ProductionVariants"]
    assert registered["ResourceId"] == (
        f"endpoint/{endpoint_name}/variant/{variant['VariantName']}"
    )
    assert registered["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (registered["MinCapacity"], registered["MaxCapacity"]) == (1, 5)

    # AND the policy tracks invocations per instance at the target value
    (stored,) = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")[
        "ScalingPolicies"
    ]
    assert stored["PolicyName"] == "onnxkit-sagemaker-invocations-per-instance"
    assert stored["PolicyType"] == "TargetTrackingScaling"
    tracking = stored["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 120
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert (tracking["ScaleOutCooldown"], tracking["ScaleInCooldown"]) == (60, 300)
