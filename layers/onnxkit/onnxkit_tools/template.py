"""template.yaml read as plain data: a safe YAML loader that accepts CloudFormation's tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Where `sam` and the `onnxkit` commands look for it: the project folder they are run from.
DEFAULT_TEMPLATE = Path("template.yaml")


class TemplateError(ValueError):
    """A template is missing or unreadable, or does not say what was asked of it."""


class CloudFormationLoader(yaml.SafeLoader):
    """Safe YAML that reads CloudFormation's short forms (``!Ref``, ``!Sub``...) as plain data.

    A tagged node becomes a one-key dict, ``{"!Ref": "Name"}``, so nothing in the template is
    resolved or executed; a value that is an intrinsic is recognisable by that key.
    """


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {f"!{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> Any:
    """A SAM/CloudFormation template as data, its intrinsics left as ``{"!Tag": value}``.

    Args:
        path: The template file (YAML or JSON).

    Raises:
        OSError: The file cannot be read.
        yaml.YAMLError: It is not YAML.
    """
    return yaml.load(path.read_text(), Loader=CloudFormationLoader)  # noqa: S506 (safe loader)
