"""template.yaml turned into plain CloudFormation in-process, and tools to read the result.

No AWS and no SAM CLI: the template is translated in four steps, each a stand-in for
something that happens at deploy time:

1. ``apply_language_extensions`` stands in for the ``AWS::LanguageExtensions`` transform, and
   only for what this template uses it for: ``Fn::If`` on conditions built from parameters
   alone (``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``, ``Condition``), with
   ``AWS::NoValue`` removed, before the SAM transform runs. Every other intrinsic is left as it
   is, and a condition that needs more than parameter values raises instead of being guessed.
   The real transform does more (it also resolves Fn::Sub, Fn::Select, ... where it can); this
   template does not rely on that.
2. ``package`` stands in for ``sam package``: it checks that the local artifact paths exist,
   then replaces them by S3 URIs (zip code, layer) or an ECR image URI (image function).
3. ``samtranslator.translator.transform.transform`` runs the real SAM transform, with a
   managed-policy loader that fails the test if called (the template names no managed
   policies through SAM, so nothing should need IAM's list of them).
4. ``deployed`` is what CloudFormation would create for those parameters: resources and
   outputs whose Condition is false are dropped, and the ``Fn::If`` that SAM itself emits are
   resolved with the same evaluator.

``evaluate`` then computes what an intrinsic would come to (Ref, Fn::GetAtt, Fn::Sub,
Fn::Select, Fn::Split, Fn::Join), with resources either as ``{Name}`` placeholders or as the
physical values a test supplies. Used by tests/unit/test_template*.py and by the moto-backed
tests/integration/test_sagemaker_control_plane.py.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO / "template.yaml"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "onnxkit",
    "AWS::AccountId": ACCOUNT,
    "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/onnxkit/"
    "6f1c3a20-af11-11ef-9c4e-0a1b2c3d4e5f",
}
NO_VALUE = {"Ref": "AWS::NoValue"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
ANY_METHOD = "x-amazon-apigateway-any-method"
SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


# --------------------------------------------------------------------------- conditions
class ConditionError(ValueError):
    """A condition the parameter-only evaluator cannot decide."""


def evaluate_condition(
    node: Any,
    conditions: Mapping[str, Any],
    params: Mapping[str, str],
    seen: tuple[str, ...] = (),
) -> bool:
    """Evaluates one condition function (or rule assertion) from parameter values alone.

    Raises:
        ConditionError: it uses something other than parameters, literals and conditions.
    """

    def value(operand: Any) -> str:
        if isinstance(operand, dict) and set(operand) == {"Ref"}:
            name = operand["Ref"]
            if name not in params:
                raise ConditionError(f"Ref to {name!r} is not a parameter")
            return str(params[name])
        if isinstance(operand, str | int | float) and not isinstance(operand, bool):
            return str(operand)
        raise ConditionError(f"cannot evaluate {operand!r} from parameters")

    if not (isinstance(node, dict) and len(node) == 1):
        raise ConditionError(f"not a condition function: {node!r}")
    ((fn, args),) = node.items()
    if fn == "Fn::Equals":
        return value(args[0]) == value(args[1])
    if fn == "Fn::Not":
        return not evaluate_condition(args[0], conditions, params, seen)
    if fn == "Fn::And":
        return all(evaluate_condition(arg, conditions, params, seen) for arg in args)
    if fn == "Fn::Or":
        return any(evaluate_condition(arg, conditions, params, seen) for arg in args)
    if fn == "Condition":
        if args in seen:
            raise ConditionError(f"condition cycle through {args!r}")
        return evaluate_condition(conditions[args], conditions, params, (*seen, args))
    raise ConditionError(f"unsupported condition function {fn}")


def evaluate_conditions(
    conditions: Mapping[str, Any], params: Mapping[str, str]
) -> dict[str, bool]:
    """Evaluates every named condition from parameter values alone.

    Raises:
        ConditionError: a condition uses something other than parameters and literals.
    """
    return {
        name: evaluate_condition(body, conditions, params, (name,))
        for name, body in conditions.items()
    }


def rule_failures(template: Mapping[str, Any], params: Mapping[str, str]) -> list[str]:
    """The AssertDescription of every template rule assertion these parameters break.

    CloudFormation checks ``Rules`` before it creates a change set; a rule applies when its
    RuleCondition (if any) holds.

    Raises:
        ConditionError: a rule uses something the parameter-only evaluator cannot decide.
    """
    conditions = template.get("Conditions", {})
    failures = []
    for rule in template.get("Rules", {}).values():
        when = rule.get("RuleCondition")
        if when is not None and not evaluate_condition(when, conditions, params):
            continue
        for assertion in rule["Assertions"]:
            if not evaluate_condition(assertion["Assert"], conditions, params):
                failures.append(assertion["AssertDescription"])
    return failures


def resolve_ifs(node: Any, truth: Mapping[str, bool]) -> Any:
    """Replaces each Fn::If by its chosen branch; AWS::NoValue removes the key or item."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, if_true, if_false = node["Fn::If"]
            return resolve_ifs(if_true if truth[name] else if_false, truth)
        resolved = {key: resolve_ifs(item, truth) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item != NO_VALUE}
    if isinstance(node, list):
        items = (resolve_ifs(item, truth) for item in node)
        return [item for item in items if item != NO_VALUE]
    return node


# --------------------------------------------------------------------------- translation
def apply_language_extensions(template: dict[str, Any], params: Mapping[str, str]) -> Any:
    """The part of AWS::LanguageExtensions this template needs; see the module docstring."""
    transforms = template["Transform"]
    assert transforms[0] == "AWS::LanguageExtensions", "LanguageExtensions must run first"
    truth = evaluate_conditions(template.get("Conditions", {}), params)
    expanded = {key: resolve_ifs(item, truth) for key, item in template.items()}
    expanded["Transform"] = [name for name in transforms if name != "AWS::LanguageExtensions"]
    return expanded


def package(template: dict[str, Any]) -> dict[str, Any]:
    """Local artifact paths -> S3/ECR URIs, as `sam package` would (after they are checked)."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                metadata = resource["Metadata"]
                context = REPO / metadata["DockerContext"]
                assert (context / metadata["Dockerfile"]).is_file(), name
                props["ImageUri"] = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/onnxkit:{name}"
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
def source() -> dict[str, Any]:
    """template.yaml as parsed (do not modify: it is shared)."""
    return yaml_parse(TEMPLATE_PATH.read_text())


def parameters(overrides: Mapping[str, str]) -> dict[str, str]:
    """Every parameter's value: its default, or the override (which must name a parameter)."""
    declared = source()["Parameters"]
    unknown = set(overrides) - set(declared)
    assert not unknown, f"not template parameters: {unknown}"
    values = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    values.update(overrides)
    return values


@functools.cache
def translate(overrides: frozenset[tuple[str, str]]) -> dict[str, Any]:
    """The SAM transform's output for these parameter overrides (cached; do not modify)."""
    params = parameters(dict(overrides))
    template = package(apply_language_extensions(copy.deepcopy(source()), params))
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": REGION}):
        return transform(template, {**params, **PSEUDO}, _RefusingPolicyLoader())


def deployed(**overrides: str) -> dict[str, Any]:
    """Resources and outputs CloudFormation would create for these parameter values."""
    translated = copy.deepcopy(translate(frozenset(overrides.items())))
    truth = evaluate_conditions(translated.get("Conditions", {}), parameters(overrides))

    def kept(section: str) -> dict[str, Any]:
        return {
            name: resolve_ifs(body, truth)
            for name, body in translated.get(section, {}).items()
            if truth.get(body.get("Condition", ""), True)
        }

    return {"Resources": kept("Resources"), "Outputs": kept("Outputs")}


# --------------------------------------------------------------------------- intrinsics
def evaluate(
    node: Any, params: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> Any:
    """What a property value comes to once CloudFormation resolves its intrinsics.

    Parameters are taken by value (``Number`` parameters as numbers, as CloudFormation hands
    them to resource providers), pseudo parameters from ``PSEUDO``, and resources from
    ``attributes`` (``"Name"`` for Ref, ``"Name.Attr"`` for Fn::GetAtt) or else rendered as
    ``{Name}`` / ``{Name.Attr}`` placeholders. Plain dicts and lists are evaluated item by item.

    Raises:
        AssertionError: an intrinsic this evaluator does not know, or a bad Fn::Select index.
    """
    attributes = attributes or {}

    def ref(name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        if name in params:
            spec = source()["Parameters"].get(name, {})
            if spec.get("Type") == "Number":
                number = float(params[name])
                return int(number) if number.is_integer() else number
            return params[name]
        return attributes.get(name, "{" + name + "}")

    def get_att(target: str) -> Any:
        return attributes.get(target, "{" + target + "}")

    if isinstance(node, list):
        return [evaluate(item, params, attributes) for item in node]
    if not isinstance(node, dict):
        return node
    key = next(iter(node), "")
    if len(node) != 1 or not (key == "Ref" or key.startswith("Fn::")):
        return {key: evaluate(item, params, attributes) for key, item in node.items()}
    ((fn, args),) = node.items()
    if fn == "Ref":
        return ref(args)
    if fn == "Fn::GetAtt":
        return get_att(args if isinstance(args, str) else ".".join(args))
    if fn == "Fn::Sub":
        text, local = (args, {}) if isinstance(args, str) else (args[0], args[1])

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return str(evaluate(local[name], params, attributes))
            return str(get_att(name) if "." in name else ref(name))

        return SUB_VARIABLE.sub(substitute, text)
    if fn == "Fn::Select":
        index, items = args
        items = evaluate(items, params, attributes)
        index = int(evaluate(index, params, attributes))
        assert 0 <= index < len(items), f"Fn::Select index {index} out of {items!r}"
        return items[index]
    if fn == "Fn::Split":
        delimiter, text = args
        return str(evaluate(text, params, attributes)).split(delimiter)
    if fn == "Fn::Join":
        delimiter, items = args
        return delimiter.join(str(item) for item in evaluate(items, params, attributes))
    raise AssertionError(f"cannot evaluate {node!r}")


def render(
    node: Any, params: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> str:
    """``evaluate`` for a value that must come to a scalar, as text."""
    value = evaluate(node, params, attributes)
    assert not isinstance(value, dict | list), f"{node!r} is not a scalar: {value!r}"
    return str(value)


# --------------------------------------------------------------------------- reading
def of_type(resources: Mapping[str, Any], type_: str) -> dict[str, Any]:
    """The resources of one type, by logical id."""
    return {name: body for name, body in resources.items() if body["Type"] == type_}


def one(resources: Mapping[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    """The only resource of a type (asserts there is exactly one)."""
    found = of_type(resources, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    return next(iter(found.items()))


def methods(api_body: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) of every route in an OpenAPI body."""
    for path, item in api_body["paths"].items():
        for method, operation in item.items():
            assert method in HTTP_METHODS | {ANY_METHOD}, (path, method)
            yield path, method, operation


def statements(role: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every statement of a role's inline policies, with Action and Resource as lists."""
    found = []
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            resources = statement["Resource"]
            found.append(
                {
                    **statement,
                    "Action": [actions] if isinstance(actions, str) else actions,
                    "Resource": resources if isinstance(resources, list) else [resources],
                }
            )
    return found


def lambda_functions(resources: Mapping[str, Any]) -> dict[str, Any]:
    """The translated AWS::Lambda::Function resources."""
    return of_type(resources, "AWS::Lambda::Function")


PREDICT_FUNCTIONS = ("PredictFunction", "PredictZipFunction")


def predict_functions(resources: Mapping[str, Any]) -> dict[str, Any]:
    """The translated predict functions (not the pre-traffic hook), by logical id."""
    return {
        name: body
        for name, body in lambda_functions(resources).items()
        if name in PREDICT_FUNCTIONS
    }


def references(node: Any) -> Iterator[str]:
    """Logical names a node points at: Ref, Fn::GetAtt, ${Name} in Fn::Sub, DependsOn."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "Ref" and isinstance(value, str):
            yield value
        elif key == "Fn::GetAtt":
            yield (value[0] if isinstance(value, list) else value).split(".")[0]
        elif key == "Fn::Sub":
            text, local = (value, {}) if isinstance(value, str) else (value[0], value[1])
            for name in SUB_VARIABLE.findall(text):
                if name not in local:
                    yield name.split(".")[0]
            yield from references(local)
        elif key == "DependsOn":
            yield from [value] if isinstance(value, str) else value
        else:
            yield from references(value)


def dependencies(resources: Mapping[str, Any], name: str) -> set[str]:
    """Every resource that CloudFormation must create before `name`."""
    found: set[str] = set()
    pending = [name]
    while pending:
        for target in references(resources[pending.pop()]):
            if target in resources and target not in found:
                found.add(target)
                pending.append(target)
    return found
