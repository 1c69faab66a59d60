"""``onnxkit publish`` and ``onnxkit models``: the registry from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkit_tools.cli.check import check_before_publish, memory_mb_option
from onnxkit_tools.cli.common import open_registry, progress_bar, store_option
from onnxkit_tools.registry import publish_model, pull, resolve_ref


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="model name ([a-z0-9._-])")
@click.option("--version", help="version (default: the next integer)")
@click.option("--alias", help="alias to point at the new version (e.g. prod)")
@click.option(
    "--backend",
    type=click.Choice(["lambda", "sagemaker"]),
    default="lambda",
    show_default=True,
    help="where the model should run: in the function, or on the GPU endpoint",
)
@click.option(
    "--report",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="quantization report (JSON from `onnxkit quantize --report`) to record",
)
@click.option(
    "--kms-key-id",
    help="encrypt the uploads with this KMS key (SSE-KMS); default: the bucket's encryption",
)
@memory_mb_option
@click.option(
    "--strict-init-budget",
    is_flag=True,
    help="refuse to publish (exit 4) when the init estimate is over budget, instead of warning",
)
@store_option
def publish(
    model: Path,
    name: str,
    version: str | None,
    alias: str | None,
    backend: str,
    report: Path | None,
    kms_key_id: str | None,
    memory_mb: int | None,
    strict_init_budget: bool,
    store: str | None,
) -> int:
    """Publish MODEL (an .onnx file, external data beside it) as a new immutable version.

    Every file is checksummed and uploaded, the manifest written last; --alias then moves an
    alias (prod) to the new version.

    First, for --backend lambda, it runs `onnxkit check` with its defaults: the model's
    on-demand init time at the stack's MemorySize (template.yaml / samconfig.toml here, or
    --memory-mb) against Lambda's 10 s init limit. Over budget it warns, or with
    --strict-init-budget refuses before uploading anything.
    """
    registry = open_registry(store, kms_key_id=kms_key_id)
    if backend == "lambda":
        check_before_publish(model, memory_mb, strict=strict_init_budget)
    with progress_bar(model.stat().st_size, f"upload {model.name}") as progress:
        manifest = publish_model(
            registry,
            model,
            name=name,
            version=version,
            alias=alias,
            backend=backend,
            report_path=report,
            progress=progress,
        )
    moved = f", {alias} -> {manifest.version}" if alias else ""
    click.echo(f"published {manifest.name} version {manifest.version} to {registry.uri}{moved}")
    click.echo(f"sha256 {manifest.model_file.sha256}  {manifest.total_size} bytes")
    return 0


@click.group()
def models() -> None:
    """Inspect the registry and move aliases."""


@models.command("list")
@store_option
def list_models(store: str | None) -> int:
    """Every model with its versions and aliases."""
    registry = open_registry(store)
    for name in registry.list_models():
        versions = registry.list_versions(name)
        aliases = registry.list_aliases(name)
        pointers = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items()))
        click.echo(f"{name}: versions {', '.join(versions) or '-'}; aliases {pointers or '-'}")
    return 0


@models.command()
@click.argument("ref")
@store_option
def show(ref: str, store: str | None) -> int:
    """The manifest of REF: NAME (its prod alias), NAME@VERSION or NAME@ALIAS."""
    click.echo(resolve_ref(open_registry(store), ref).to_json().decode(), nl=False)
    return 0


@models.command()
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="prod", show_default=True)
@store_option
def promote(name: str, version: str, alias: str, store: str | None) -> int:
    """Point an alias of NAME at VERSION.

    A conditional write: refused if someone moved the alias meanwhile. Functions serving the
    alias pick the new version up within ONNXKIT_REFRESH_SECONDS.
    """
    record = open_registry(store).set_alias(name, alias, version)
    previous = record.history[0]["version"] if record.history else "nothing"
    click.echo(f"{name}@{alias}: {previous} -> {record.version}")
    return 0


@models.command()
@click.argument("name")
@click.option("--alias", default="prod", show_default=True)
@store_option
def rollback(name: str, alias: str, store: str | None) -> int:
    """Point an alias of NAME back at its previous version; again walks further back."""
    registry = open_registry(store)
    before = registry.get_alias(name, alias).version
    record = registry.rollback_alias(name, alias)
    click.echo(f"{name}@{alias}: {before} -> {record.version} (rolled back)")
    return 0


@models.command("pull")
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="folder for the files (replaced)",
)
@store_option
def pull_model(ref: str, out: Path, store: str | None) -> int:
    """Download REF (NAME, NAME@VERSION or NAME@ALIAS), verified, with its manifest.json.

    The folder can be served as is: `onnxkit local start-endpoint --model-dir OUT`, or packed
    as SageMaker's model.tar.gz.
    """
    registry = open_registry(store)
    manifest = resolve_ref(registry, ref)
    label = f"download {manifest.name}@{manifest.version}"
    with progress_bar(manifest.total_size, label) as progress:
        pull(registry, manifest, out, progress)
    click.echo(
        f"{manifest.name}@{manifest.version} -> {out} (verified, {manifest.total_size} bytes)"
    )
    return 0
