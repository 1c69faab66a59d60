"""``onnxkit publish`` and ``onnxkit models``: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from onnxkit.names import NAME_RULE
from onnxkit.store import AliasRecord
from onnxkit_tools.cli.check import check_before_publish, memory_mb_option
from onnxkit_tools.cli.common import (
    check_name_param,
    open_registry,
    progress_bar,
    store_option,
    tokenizer_options,
)
from onnxkit_tools.registry import publish_model, pull, resolve_ref


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, callback=check_name_param, help=f"model name ({NAME_RULE})")
@click.option(
    "--version",
    callback=check_name_param,
    help="version, under the same rule as --name (default: the next integer)",
)
@click.option(
    "--alias",
    callback=check_name_param,
    help="alias to point at the new version (e.g. prod), under the same rule as --name",
)
@click.option(
    "--backend",
    type=click.Choice(["lambda", "sagemaker"]),
    default="lambda",
    show_default=True,
    help="where the model should run: in the function, or on the GPU endpoint",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a report to record in the manifest: the quantization report (`onnxkit quantize "
    "--report`) and/or the conversion report (`onnxkit convert`'s MODEL.conversion.json); "
    "repeatable, told apart by their schema",
)
@click.option(
    "--kms-key-id",
    help="encrypt the uploads with this KMS key (SSE-KMS); default: the bucket's encryption",
)
@click.option(
    "--cpu-graph/--no-cpu-graph",
    default=True,
    show_default=True,
    help="also publish the graph with onnxruntime's extended optimizations done (checked "
    "against the original's outputs), so a CPU function's cold start skips them",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a Hugging Face tokenizer.json: the model then takes sentences (a BYTES input, "
    "text/plain, or a JSON list of strings) and feeds input_ids/attention_mask/token_type_ids",
)
@click.option(
    "--text-input", default="text", show_default=True, help="the name of the sentences input"
)
@tokenizer_options
@click.option(
    "--preprocess",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="image preprocessing (JSON: color, resize/crop, layout, scale, mean, std, dtype, "
    "max_pixels): the model then takes PNG/JPEG images (a BYTES input, image/png, image/jpeg); "
    "max_pixels, the pixels one request may decode, is at most 67108864, and each side of "
    "resize/crop at most 8192",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="class labels, one per line in the order of the scores: answers add the top-k labels",
)
@click.option("--top-k", type=click.IntRange(1, 1000), help="classes to list (default 5, or fewer)")
@click.option("--softmax", is_flag=True, help="turn the class scores into probabilities first")
@click.option("--output", "scores_output", help="the output holding the class scores")
@click.option(
    "--l2-normalize",
    multiple=True,
    metavar="OUTPUT",
    help="divide this output by its L2 norm (embeddings); repeatable",
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
    reports: tuple[Path, ...],
    kms_key_id: str | None,
    cpu_graph: bool,
    tokenizer: Path | None,
    text_input: str,
    max_length: int,
    truncation: bool,
    padding: str,
    preprocess: Path | None,
    labels: Path | None,
    top_k: int | None,
    softmax: bool,
    scores_output: str | None,
    l2_normalize: tuple[str, ...],
    memory_mb: int | None,
    strict_init_budget: bool,
    store: str | None,
) -> int:
    """Publish MODEL (an .onnx file, external data beside it) as a new immutable version.

    Every file is checksummed and uploaded, the manifest written last; --alias then moves an
    alias (prod) to the new version. A single-file model for the function is published with
    its CPU twin (--no-cpu-graph: without), which the function loads instead.

    First, for --backend lambda, it runs `onnxkit check` with its defaults: the model's
    on-demand init time at the stack's MemorySize (template.yaml / samconfig.toml here, or
    --memory-mb) against Lambda's 10 s init limit. Over budget it warns, or with
    --strict-init-budget refuses before uploading anything.

    Processing is published with the version and versioned with it: --tokenizer (sentences
    in), --preprocess (images in), --labels/--top-k/--softmax (labels out), --l2-normalize
    (embeddings). Its files are checksummed like the graph and loaded once here, so a bad file
    fails now rather than in the function. A conversion report (--report
    MODEL.conversion.json) from a transformers checkpoint names the tokenizer onnxkit convert
    copied beside the model: it is published as --tokenizer unless --tokenizer is given.
    """
    from onnxkit_tools.processing import ProcessingOptions

    report, conversion = _sort_reports(reports)
    if tokenizer is None and conversion is not None:
        tokenizer = _converted_tokenizer(conversion)
        if tokenizer is not None:
            click.echo(
                f"tokenizer {tokenizer} (copied by onnxkit convert, named in {conversion.name}): "
                "the model takes sentences too; --tokenizer picks another"
            )
    options = ProcessingOptions(
        tokenizer=tokenizer,
        text_input=text_input,
        max_length=max_length,
        truncation=truncation,
        padding=padding,
        preprocess=preprocess,
        labels=labels,
        top_k=top_k,
        softmax=softmax,
        output=scores_output,
        l2_normalize=l2_normalize,
    )
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
            conversion_path=conversion,
            progress=progress,
            cpu_graph=cpu_graph,
            on_upload_size=progress.resize,  # the CPU twin adds to it
            processing=options if options.wanted else None,
        )
    moved = f", {alias} -> {manifest.version}" if alias else ""
    click.echo(f"published {manifest.name} version {manifest.version} to {registry.uri}{moved}")
    click.echo(f"sha256 {manifest.model_file.sha256}  {manifest.total_size} bytes")
    if manifest.cpu_file is not None and manifest.cpu_graph is not None:
        click.echo(
            f"cpu graph {manifest.cpu_file.path}: onnxruntime {manifest.cpu_graph['onnxruntime']}"
            f" {manifest.cpu_graph['level']} optimizations, outputs within "
            f"{manifest.cpu_graph['max_abs_diff']:.1g} of the original's"
        )
    if manifest.processing:
        click.echo(f"processing {describe_processing(manifest.processing)}")
    return 0


def describe_processing(processing: dict[str, Any]) -> str:
    """One line: what a version's processing takes and adds."""
    parts = []
    if "text" in processing:
        text = processing["text"]
        parts.append(
            f"text -> {text['input']!r} (tokenizer {text['tokenizer']}, max {text['max_length']} "
            f"tokens, truncation {'on' if text['truncation'] else 'off'})"
        )
    if "image" in processing:
        image = processing["image"]
        parts.append(f"images -> {image['input']!r} (feeds {image['feeds']!r})")
    for step in processing.get("postprocess", []):
        done = [k for k in ("softmax", "l2_normalize") if step.get(k)]
        if step.get("top_k"):
            done.append(f"top {step['top_k']}" + (" with labels" if step.get("labels") else ""))
        parts.append(f"{step['output']}: {', '.join(done) or 'as is'}")
    return "; ".join(parts)


def _converted_tokenizer(conversion: Path) -> Path | None:
    """The tokenizer ``onnxkit convert`` copied beside the model, as its report names it
    (a file beside the report); None when it names none.

    Raises:
        click.BadParameter: The report names a tokenizer that is not there.
    """
    named = json.loads(conversion.read_text()).get("tokenizer")
    if not named:
        return None
    path = conversion.parent / Path(named).name
    if not path.is_file():
        raise click.BadParameter(
            f"{conversion.name} names the tokenizer {named}, which is not beside it: copy it "
            "back or pass --tokenizer",
            param_hint="--report",
        )
    return path


def _sort_reports(reports: tuple[Path, ...]) -> tuple[Path | None, Path | None]:
    """(quantization report, conversion report) among ``--report`` files, by their schema."""
    from onnxkit_tools.convert.convert import REPORT_SCHEMA as CONVERSION_SCHEMA

    found: dict[str, Path] = {}
    for path in reports:
        try:
            schema = json.loads(path.read_text()).get("schema")
        except (ValueError, AttributeError) as exc:
            raise click.BadParameter(f"{path} is not a JSON report", param_hint="--report") from exc
        kind = "conversion" if schema == CONVERSION_SCHEMA else "quantization"
        if kind in found:
            raise click.BadParameter(
                f"two {kind} reports: {found[kind]} and {path}", param_hint="--report"
            )
        found[kind] = path
    return found.get("quantization"), found.get("conversion")


@click.group()
def models() -> None:
    """Inspect the registry and move aliases."""


@models.command("list")
@store_option
def list_models(store: str | None) -> int:
    """Every model with its versions and aliases (with a canary: its version and weight)."""
    registry = open_registry(store)
    for name in registry.list_models():
        versions = registry.list_versions(name)
        aliases = registry.list_alias_records(name)
        pointers = ", ".join(describe_alias(aliases[a]) for a in sorted(aliases))
        click.echo(f"{name}: versions {', '.join(versions) or '-'}; aliases {pointers or '-'}")
    return 0


def describe_alias(record: AliasRecord) -> str:
    """``prod->1`` and, with a canary, ``(canary 2 at 20%)``; the last abort, if any."""
    text = f"{record.alias}->{record.version}"
    if record.canary_version is not None:
        text += f" (canary {record.canary_version} at {record.canary_weight}%)"
    if record.aborted is not None:
        aborted = record.aborted
        text += (
            f" (canary {aborted.get('version')} aborted {aborted.get('at')}: "
            f"{aborted.get('reason')})"
        )
    return text


@models.command()
@click.argument("ref")
@store_option
def show(ref: str, store: str | None) -> int:
    """The manifest of REF: NAME (its prod alias), NAME@VERSION or NAME@ALIAS.

    Prints the manifest (JSON) on stdout; a version with processing also gets a one-line
    summary of it on stderr.
    """
    manifest = resolve_ref(open_registry(store), ref)
    click.echo(manifest.to_json().decode(), nl=False)
    if manifest.processing:
        click.echo(f"processing: {describe_processing(manifest.processing)}", err=True)
    return 0


@models.command()
@click.argument("name", callback=check_name_param)
@click.argument("version", required=False, callback=check_name_param)
@click.option("--alias", default="prod", show_default=True, callback=check_name_param)
@click.option(
    "--canary",
    type=click.IntRange(1, 99),
    metavar="PERCENT",
    help="serve VERSION to this share of requests beside the stable version (again: re-weight)",
)
@click.option("--finish", is_flag=True, help="make the running canary the stable version")
@store_option
def promote(
    name: str,
    version: str | None,
    alias: str,
    canary: int | None,
    finish: bool,
    store: str | None,
) -> int:
    """Point an alias of NAME at VERSION, or start (--canary) or finish (--finish) a canary.

    A conditional write: refused if someone moved the alias meanwhile. Functions serving the
    alias pick the change up within ONNXKIT_REFRESH_SECONDS.
    """
    if finish:
        if version is not None or canary is not None:
            raise click.UsageError("--finish takes no VERSION and no --canary")
        record = open_registry(store).finish_canary(name, alias)
        previous = record.history[0]["version"]
        click.echo(f"{name}@{alias}: {previous} -> {record.version} (canary finished)")
        return 0
    if version is None:
        raise click.UsageError("VERSION is required (or --finish)")
    registry = open_registry(store)
    if canary is not None:
        record = registry.set_canary(name, alias, version, canary)
        click.echo(f"{name}@{alias}: {record.version}, canary {version} at {canary}% of requests")
        return 0
    record = registry.set_alias(name, alias, version)
    previous = record.history[0]["version"] if record.history else "nothing"
    click.echo(f"{name}@{alias}: {previous} -> {record.version}")
    return 0


@models.command()
@click.argument("name", callback=check_name_param)
@click.option("--alias", default="prod", show_default=True, callback=check_name_param)
@store_option
def rollback(name: str, alias: str, store: str | None) -> int:
    """Drop the alias's running canary; without one, point it back at its previous version.

    Again walks further back.
    """
    registry = open_registry(store)
    before = registry.get_alias(name, alias)
    record = registry.rollback_alias(name, alias)
    if before.canary_version is not None:
        click.echo(
            f"{name}@{alias}: canary {before.canary_version} dropped; serving {record.version}"
        )
    else:
        click.echo(f"{name}@{alias}: {before.version} -> {record.version} (rolled back)")
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
    with progress_bar(manifest.stored_size, label) as progress:
        pull(registry, manifest, out, progress)
    click.echo(
        f"{manifest.name}@{manifest.version} -> {out} (verified, {manifest.stored_size} bytes)"
    )
    return 0
