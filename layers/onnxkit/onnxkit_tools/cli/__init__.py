"""The ``onnxkit`` command line, on click: each command is a thin call into the library.

Every command that reads the model store takes ``--store`` (default ``$ONNXKIT_MODEL_STORE``);
S3 goes to ``AWS_ENDPOINT_URL_S3`` when set (a moto server locally), else to AWS.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from onnxkit import __version__
from onnxkit.errors import OnnxkitError
from onnxkit_tools.cli.bench import bench
from onnxkit_tools.cli.build import examples, quantize
from onnxkit_tools.cli.check import check
from onnxkit_tools.cli.convert import convert
from onnxkit_tools.cli.local import local
from onnxkit_tools.cli.openapi import openapi
from onnxkit_tools.cli.registry import models, publish
from onnxkit_tools.local.emulator import EmulatorError

EPILOG = """\b
examples:
  onnxkit examples build digits --out build/digits
  onnxkit convert mymodels:build_regressor --out build/regressor/model.onnx
  onnxkit publish build/digits/int8/model.onnx --name digits --alias prod \\
      --report build/digits/report.json --store s3://my-bucket/onnxkit
  onnxkit check build/digits/int8/model.onnx
  onnxkit bench build/digits/int8/model.onnx --out build/digits/bench
  onnxkit models list --store s3://my-bucket/onnxkit
  onnxkit local invoke --event events/predict_infer_200.json
  onnxkit local start-api --port 3000
  onnxkit local start-endpoint --model-dir build/digits/int8
  onnxkit openapi --edge function > openapi.json
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(__version__, prog_name="onnxkit")
def cli() -> None:
    """Serverless deployment kit for ONNX models on AWS: build, quantize and publish models, run
    the function and the SageMaker endpoint locally without AWS or Docker, and estimate what
    serving a model costs (onnxkit bench)."""


for command in (examples, convert, quantize, publish, check, bench, models, local, openapi):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxkit`` command: its exit code.

    Errors onnxkit raises on purpose print as ``error [code]: message`` (exit 1); usage errors
    print click's usage line (exit 2); anything else is a bug and shows its traceback.
    """
    try:
        result = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except OnnxkitError as exc:
        click.echo(f"error [{exc.code}]: {exc.message}", err=True)
        return 1
    except (EmulatorError, FileNotFoundError, json.JSONDecodeError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
