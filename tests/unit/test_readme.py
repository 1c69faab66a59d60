"""The README's claims that a test can check: variables, error codes, commands, parameters,
routes and make targets are the code's own."""

from __future__ import annotations

import re

import click
import pytest

from onnxkit import errors
from onnxkit.routes import ROUTES
from onnxkit.settings import DEPRECATED_VARIABLES, KNOWN_VARIABLES
from onnxkit_tools.cli import cli
from tests.conftest import REPO
from tests.unit.template_helpers import source

README = (REPO / "README.md").read_text()
TOOL_VARIABLES = {"ONNXKIT_RIE"}  # read by the tools, not by a function or the endpoint
# Codes raised with an explicit code= (not a class's default), and the endpoint protocol's own.
OTHER_CODES = {
    "store_access_denied",
    "store_bucket_missing",
    "overloaded",
    "bad_request",
    "cannot_unload",
    "use_infer",
    "scaling_up",
}


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_every_variable_is_documented_and_every_documented_one_exists() -> None:
    named = set(re.findall(r"\bONNXKIT_[A-Z0-9_]+\b", README))
    documented = {name for name in named if not name.endswith("_")}  # ONNXKIT_S3_* is a family

    assert documented >= KNOWN_VARIABLES, KNOWN_VARIABLES - documented
    assert documented - TOOL_VARIABLES <= KNOWN_VARIABLES, documented - KNOWN_VARIABLES
    for old, new in DEPRECATED_VARIABLES.items():
        assert f"`{old}`" in README
        assert f"`{new}`" in README


def all_codes() -> set[str]:
    classes = [errors.OnnxkitError]
    codes = set()
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes += cls.__subclasses__()
    return codes | OTHER_CODES


def test_the_errors_table_names_every_code_and_no_other() -> None:
    table = section("The API").split("### Errors", 1)[1]
    rows = [line.split("|") for line in table.splitlines() if re.match(r"\| \d{3} \|", line)]
    documented = {code for row in rows for code in re.findall(r"`([a-z_]+)`", row[2])}
    # what the servers answer with: not the registry's or the CLI's own refusals
    tooling = {
        "version_exists",
        "alias_conflict",
        "configuration_error",
        "quantize_error",
        "bench_error",
        "convert_error",
        "parity_error",
        "invalid_processing",  # publish's and quantize's --tokenizer/--preprocess/--labels
    }

    assert all_codes() - tooling <= documented, all_codes() - tooling - documented
    assert documented <= all_codes(), documented - all_codes()


def commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix}{name} ")
        else:
            found.append(f"{prefix}{name}")
    return found


@pytest.mark.parametrize("command", commands(cli))
def test_every_command_is_in_the_cli_table(command: str) -> None:
    assert f"`onnxkit {command}" in section("The CLI"), command


@pytest.mark.parametrize("parameter", sorted(source()["Parameters"]))
def test_every_template_parameter_is_documented(parameter: str) -> None:
    assert f"`{parameter}`" in section("Deploying to AWS"), parameter


def test_every_route_is_in_the_api_table() -> None:
    api = section("The API")

    for route in ROUTES:
        assert f"`{route.path}`" in api, route.path


def test_every_make_target_in_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text()

    for target in set(re.findall(r"`make ([a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
