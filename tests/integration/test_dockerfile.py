"""The image's build context, checked without Docker: what the Dockerfile copies is enough."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

DOCKERFILE = REPO / "functions" / "predict" / "Dockerfile"


def copy_instructions() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY line."""
    copies = []
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY":
            *sources, dest = parts[1:]
            copies.append((sources, dest))
    return copies


def test_dockerfile_uses_the_lambda_python312_base_and_handler() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM public.ecr.aws/lambda/python:3.12" in text
    assert 'CMD ["app.lambda_handler"]' in text
    assert any("functions/predict/app.py" in s for s, _ in copy_instructions())


def test_the_copied_files_build_an_installable_package(tmp_path: Path) -> None:
    # GIVEN only what the Dockerfile copies for the package step, laid out as it lays it out
    context = tmp_path / "image"
    for sources, dest in copy_instructions():
        if not dest.startswith("/tmp/onnxkit"):
            continue
        target = context / dest.removeprefix("/tmp/onnxkit").lstrip("/")
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)

    # WHEN pip builds it (as `pip install /tmp/onnxkit` does in the image)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    # THEN the wheel holds the whole library, and app.py's imports resolve from it
    wheel = next((tmp_path / "dist").glob("onnxkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    library = REPO / "layers" / "onnxkit" / "onnxkit"
    expected = {
        f"onnxkit/{p.relative_to(library).as_posix()}"
        for p in library.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected <= names, sorted(expected - names)
    for module in ("onnxkit/adapters/lambda_api.py", "onnxkit/settings.py"):
        assert module in names
