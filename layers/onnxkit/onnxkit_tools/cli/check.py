"""``onnxkit check``: estimate a model's on-demand Lambda init time against the 10 s limit."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from onnxkit.manifest import Manifest
from onnxkit_tools.cli.common import open_registry, progress_bar, store_option
from onnxkit_tools.initbudget import (
    DEFAULT_MARGIN,
    DEFAULT_REPEATS,
    DEFAULT_S3_MBPS,
    MAX_MEMORY_MB,
    MIN_MEMORY_MB,
    Estimate,
    StackConfigError,
    StackMemory,
    estimate_init,
    estimate_to_dict,
    format_estimate,
    format_warnings,
    measure_locally,
    size_notes,
    stack_memory,
)

# Distinct from 0 (fits), 1 (error) and 2 (usage) so that CI can tell "too slow" apart.
EXIT_OVER_INIT_BUDGET = 4
DEFAULT_TEMPLATE = Path("template.yaml")


class InitBudgetError(click.ClickException):
    """``publish --strict-init-budget`` refused a model over the init budget (exit 4)."""

    exit_code = EXIT_OVER_INIT_BUDGET


@dataclass(frozen=True)
class LocalModel:
    """A model's graph file on disk and the manifest that lists its files."""

    path: Path
    manifest: Manifest


def memory_mb_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--memory-mb``, defaulting to the stack's MemorySize."""
    return click.option(
        "--memory-mb",
        type=click.IntRange(MIN_MEMORY_MB, MAX_MEMORY_MB),
        help="the function's MemorySize in MB [default: MemorySize from samconfig.toml's "
        "parameter_overrides, else the template.yaml parameter's default]",
    )(function)


def resolve_memory(
    memory_mb: int | None, template: Path = DEFAULT_TEMPLATE, config_env: str = "default"
) -> StackMemory:
    """``--memory-mb`` when given, else what ``sam deploy`` would use.

    Raises:
        click.UsageError: Neither is available.
    """
    if memory_mb is not None:
        return StackMemory(memory_mb, "--memory-mb")
    try:
        return stack_memory(template, config_env=config_env)
    except StackConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def local_model(path: Path) -> LocalModel:
    """A ``.onnx`` file or a model folder (its ``manifest.json`` when it has one).

    Raises:
        OnnxkitError: Not a readable ONNX model, or a folder without one.
    """
    from onnxkit.sources import find_model_file, read_manifest
    from onnxkit_tools.registry import describe_model

    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is not None:
            return LocalModel(path / manifest.model_file.path, manifest)
        path = find_model_file(path)
    return LocalModel(path, describe_model(path, name="check", version="local"))


@contextlib.contextmanager
def model_on_disk(model: str, store: str | None) -> Iterator[LocalModel]:
    """MODEL as a local file: itself, or a store ref (``digits@prod``) pulled to a temporary folder.

    Raises:
        click.BadParameter: A path that does not exist.
        OnnxkitError: The ref is not published, or the files are not a readable model.
    """
    from onnxkit_tools.registry import pull, resolve_ref

    path = Path(model)
    if path.exists():
        yield local_model(path)
        return
    if path.suffix == ".onnx" or "/" in model:
        raise click.BadParameter(f"{model} does not exist", param_hint="MODEL")
    registry = open_registry(store)
    manifest = resolve_ref(registry, model)
    with tempfile.TemporaryDirectory(prefix="onnxkit-check-") as scratch:
        out = Path(scratch) / "model"
        label = f"download {manifest.name}@{manifest.version}"
        with progress_bar(manifest.stored_size, label) as progress:  # (the twin too)
            pull(registry, manifest, out, progress)
        yield LocalModel(out / manifest.model_file.path, manifest)


def run_check(
    model: LocalModel,
    *,
    label: str,
    memory: StackMemory,
    s3_mbps: float = DEFAULT_S3_MBPS,
    cpu_factor: float = 1.0,
    margin: float = DEFAULT_MARGIN,
    repeats: int = DEFAULT_REPEATS,
    as_json: bool = False,
) -> Estimate:
    """Measure, estimate, print the estimate on stdout and any warning on stderr.

    Raises:
        ModelLoadError: onnxruntime cannot load or run the model.
    """
    measured = measure_locally(model.path, model.manifest.inputs, repeats=repeats)
    estimate = estimate_init(
        measured,
        model.manifest.total_size,
        memory.memory_mb,
        s3_mbps=s3_mbps,
        cpu_factor=cpu_factor,
        margin=margin,
    )
    if as_json:
        document = estimate_to_dict(estimate)
        document["memory_source"] = memory.source
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo("\n".join(format_estimate(estimate, label=label, memory_source=memory.source)))
    if model.manifest.backend == "sagemaker":
        click.echo(
            f"note: {label} is published with backend sagemaker: under ModelBackend=auto the "
            "function forwards it and does not load it; the estimate is for ModelBackend=lambda",
            err=True,
        )
    for line in [
        *format_warnings(estimate),
        *(f"warning: {n}" for n in size_notes(estimate.total_bytes)),
    ]:
        click.echo(line, err=True)
    return estimate


def check_before_publish(model: Path, memory_mb: int | None, *, strict: bool) -> None:
    """What ``onnxkit publish`` runs first: the check with its defaults, on the file to publish.

    Without ``--memory-mb`` and without a template here, it says how to get the check and
    returns (a publish from elsewhere than the project is not refused for it).

    Raises:
        InitBudgetError: ``strict`` and the estimate is over budget.
        click.UsageError: ``strict`` and no MemorySize is known.
    """
    if memory_mb is None and not DEFAULT_TEMPLATE.is_file() and not strict:
        click.echo(
            f"note: init budget not checked: no {DEFAULT_TEMPLATE} here to read MemorySize "
            "from; pass --memory-mb (or run `onnxkit check`)",
            err=True,
        )
        return
    memory = resolve_memory(memory_mb)
    estimate = run_check(local_model(model), label=str(model), memory=memory)
    if strict and not estimate.fits:
        raise InitBudgetError(
            f"not published: the init estimate {estimate.total_s:.1f} s is over "
            f"{estimate.budget_s:.1f} s (--strict-init-budget); see the advice above"
        )


EPILOG = """\b
examples:
  onnxkit check build/digits/int8/model.onnx
  onnxkit check digits@prod --store s3://my-bucket/onnxkit --memory-mb 3008
  onnxkit check build/big --s3-mbps 150 --json
"""


@click.command(epilog=EPILOG)
@click.argument("model")
@memory_mb_option
@click.option(
    "--template-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="SAM template whose MemorySize default applies (samconfig.toml is read beside it)",
)
@click.option(
    "--config-env",
    default="default",
    show_default=True,
    help="samconfig.toml environment to read parameter_overrides from",
)
@click.option(
    "--s3-mbps",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_S3_MBPS,
    show_default=True,
    help="S3 throughput the function gets, MB/s (10^6 bytes). The default sits in the "
    "50-90 MB/s that downloads inside Lambda are reported to reach (one GET stream: 80-100 "
    "MB/s); parallel ranged GETs may do better. Measure yours and pass it",
)
@click.option(
    "--cpu-factor",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Lambda core time / core time here: 1 takes a Lambda core as fast as one here, 1.5 "
    "as 1.5x slower",
)
@click.option(
    "--margin",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=DEFAULT_MARGIN,
    show_default=True,
    help="warn (exit 4) above this fraction of the 10 s limit",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 50),
    default=DEFAULT_REPEATS,
    show_default=True,
    help="sessions to create and warm up here (the median counts)",
)
@click.option("--json", "as_json", is_flag=True, help="print the estimate as JSON")
@store_option
def check(
    model: str,
    memory_mb: int | None,
    template_file: Path,
    config_env: str,
    s3_mbps: float,
    cpu_factor: float,
    margin: float,
    repeats: int,
    as_json: bool,
    store: str | None,
) -> int:
    """Estimate MODEL's on-demand init time on Lambda against the 10 s init limit.

    MODEL is an .onnx file (external data beside it), a model folder, or a store ref (NAME,
    NAME@VERSION or NAME@ALIAS, pulled from --store). On demand Lambda gives init 10 s; past
    it, init is retried inside the first invoke and counts against the function timeout
    (SnapStart and provisioned concurrency lift the limit).

    The estimate adds the function's imports (timed here in a fresh interpreter), the download
    of every file at --s3-mbps, the sha256 check, session creation and one warm-up run (timed
    here with one thread, median of --repeats). The CPU phases are scaled to the vCPU share
    of --memory-mb (1 vCPU per 1,769 MB; below it a thread gets that fraction of a core),
    taking a Lambda core as fast as one here unless --cpu-factor says otherwise.

    Exit status: 0 within budget; 4 when the estimate passes --margin of the limit (the
    warning on stderr says what to do: more memory, SnapStart, provisioned concurrency or the
    SageMaker endpoint); 1 on errors; 2 on usage errors.
    """
    memory = resolve_memory(memory_mb, template_file, config_env)
    with model_on_disk(model, store) as found:
        estimate = run_check(
            found,
            label=model,
            memory=memory,
            s3_mbps=s3_mbps,
            cpu_factor=cpu_factor,
            margin=margin,
            repeats=repeats,
            as_json=as_json,
        )
    return 0 if estimate.fits else EXIT_OVER_INIT_BUDGET
