"""``onnxkit openapi``: the OpenAPI 3 document of an edge, generated from the route table."""

from __future__ import annotations

import json

import click

from onnxkit.openapi import build_document
from onnxkit.routes import ENDPOINT, FUNCTION, RouteTable


@click.command()
@click.option(
    "--edge",
    type=click.Choice([FUNCTION, ENDPOINT]),
    default=FUNCTION,
    show_default=True,
    help="function: the API behind API Gateway; endpoint: the SageMaker container's",
)
def openapi(edge: str) -> int:
    """Print the OpenAPI 3 document of the API (JSON), as the servers serve it at
    /v2/openapi.json."""
    table = RouteTable(FUNCTION if edge == FUNCTION else ENDPOINT, openapi=True)
    click.echo(json.dumps(build_document(table), indent=2))
    return 0
