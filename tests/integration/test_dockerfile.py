"""Both images, checked without Docker: what each Dockerfile copies, builds and installs.

Each image installs the runtime package alone, with one extra from the one pyproject.toml. The
tests lay out exactly what a Dockerfile copies, build the package from it as `pip install`
does, and ask pip what the image's install would bring (`--dry-run --report`, for python3.12
on x86_64 Linux): the tooling (onnxkit_tools, the CLI, quantization, examples, local stack)
and its packages are in neither image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

LAMBDA = REPO / "functions" / "predict" / "Dockerfile"
GPU = REPO / "functions" / "sagemaker_endpoint" / "Dockerfile"
SERVE = REPO / "functions" / "sagemaker_endpoint" / "serve"
RUNTIME = REPO / "layers" / "onnxkit" / "onnxkit"
CONTEXT = "/tmp/onnxkit"  # where both Dockerfiles assemble the package before installing it
# Packages only the tooling, tests or examples need: never in an image.
TOOLING = {
    "onnxkit-tools", "onnx", "scikit-learn", "skl2onnx", "tqdm", "moto", "awslambdaric",
    "torch", "transformers", "schemathesis", "pytest", "mypy", "ruff",
}  # fmt: skip
TARGET = [
    "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
]  # fmt: skip


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(keyword, rest) of each instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword, rest))
    return result


def layout(dockerfile: Path, into: Path) -> None:
    """Lay out what the Dockerfile copies into the package's build folder, as it does."""
    for keyword, rest in instructions(dockerfile):
        *sources, dest = rest.split()
        if keyword != "COPY" or not dest.startswith(CONTEXT):
            continue
        target = into / dest.removeprefix(CONTEXT).lstrip("/")
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)


def installed_extra(dockerfile: Path) -> str:
    """The extra the Dockerfile's pip install names: `pip install "/tmp/onnxkit[EXTRA]"`."""
    (extra,) = re.findall(rf'pip install[^"]*"{CONTEXT}\[([\w-]+)\]"', dockerfile.read_text())
    return extra


def pip(*args: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


# What each image must and must not install, beside the runtime core.
EXPECTED = {
    LAMBDA: (
        {
            "onnxkit",
            "onnxruntime",
            "numpy",
            "aws-lambda-powertools",
            "boto3",
            "python-mimeparse",
            "pillow",
            "tokenizers",
        },
        {"uvicorn", "starlette", "onnxruntime-gpu", "click", "huggingface-hub"},
    ),
    GPU: (
        {
            "onnxkit",
            "onnxruntime-gpu",
            "numpy",
            "boto3",
            "uvicorn",
            "starlette",
            "httptools",
            "pillow",
            "tokenizers",
        },
        # the CPU build would shadow the GPU one; the Hub client is never used
        {"onnxruntime", "aws-lambda-powertools", "huggingface-hub"},
    ),
}


@pytest.fixture(scope="module", params=[LAMBDA, GPU], ids=["lambda", "gpu"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """For one Dockerfile: the wheel its copied files build, and its install set."""
    dockerfile: Path = request.param
    work = tmp_path_factory.mktemp(dockerfile.parent.name)
    layout(dockerfile, work / "context")
    pip("wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(work / "context"))
    wheel = next((work / "dist").glob("onnxkit-*.whl"))
    extra = installed_extra(dockerfile)
    report = work / "report.json"
    pip("install", "--dry-run", "-q", "--ignore-installed", "--report", str(report), *TARGET,
        f"{wheel}[{extra}]")  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    # What the Dockerfile adds without dependencies (tokenizers), as it installs it.
    assert (
        f"pip install{' --no-cache-dir' if dockerfile == LAMBDA else ''} --no-deps -r "
        f"{CONTEXT}/layers/onnxkit/no-deps.txt" in re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    )
    pip("install", "--dry-run", "-q", "--ignore-installed", "--no-deps", "--report",
        str(report), *TARGET, "-r", str(REPO / "layers" / "onnxkit" / "no-deps.txt"))  # fmt: skip
    installs += json.loads(report.read_text())["install"]
    return {
        "dockerfile": dockerfile,
        "extra": extra,
        "files": set(zipfile.ZipFile(wheel).namelist()),
        "packages": {entry["metadata"]["name"].lower().replace("_", "-") for entry in installs},
    }


def test_the_image_builds_the_runtime_package_alone(image: dict) -> None:
    modules = {f for f in image["files"] if f.endswith(".py")}
    expected = {
        f"onnxkit/{p.relative_to(RUNTIME).as_posix()}"
        for p in RUNTIME.rglob("*.py")
        if "__pycache__" not in p.parts
    }

    assert modules == expected
    assert not any(f.startswith("onnxkit_tools") for f in image["files"])


def test_the_install_set_has_no_tooling(image: dict) -> None:
    assert not TOOLING & image["packages"], TOOLING & image["packages"]


def test_the_lambda_image_installs_the_lambda_extra() -> None:
    assert installed_extra(LAMBDA) == "lambda"


def test_each_image_gets_what_its_edge_runs(image: dict) -> None:
    present, absent = EXPECTED[image["dockerfile"]]

    assert present <= image["packages"], present - image["packages"]
    assert not absent & image["packages"]


def test_the_lambda_dockerfile_uses_the_python312_base_and_handler() -> None:
    text = LAMBDA.read_text()

    assert "FROM public.ecr.aws/lambda/python:3.12" in text
    assert 'CMD ["app.lambda_handler"]' in text
    assert ("COPY", "functions/predict/app.py ${LAMBDA_TASK_ROOT}/") in instructions(LAMBDA)


def test_the_gpu_dockerfile_builds_a_cuda_image_that_runs_serve() -> None:
    text = GPU.read_text()
    steps = instructions(GPU)
    base = next(rest for keyword, rest in steps if keyword == "FROM")

    assert base.startswith("nvidia/cuda:13.")
    assert base.endswith("-cudnn-runtime-ubuntu24.04")
    assert installed_extra(GPU) == "endpoint-gpu"
    assert "'CUDAExecutionProvider' in ort.get_available_providers()" in text
    assert "ONNXKIT_BIND_HOST=0.0.0.0" in text  # the server's default is loopback
    assert "EXPOSE 8080" in text
    assert ("CMD", '["serve"]') in steps
    assert not [keyword for keyword, _ in steps if keyword == "ENTRYPOINT"]  # `run IMAGE serve`
    for keyword, rest in steps:
        if keyword == "COPY":
            *sources, _ = rest.split()
            assert all((REPO / source).exists() for source in sources), sources
    assert ("COPY", "functions/sagemaker_endpoint/serve /usr/local/bin/serve") in steps
    assert os.access(SERVE, os.X_OK)
    assert SERVE.read_text().startswith("#!/usr/bin/env python3\n")


def test_the_gpu_pin_lives_in_pyproject_alone() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["endpoint-gpu"]

    assert "onnxruntime-gpu==1.31.1" in gpu
    assert "onnxruntime" not in " ".join(project["dependencies"])  # CPU or GPU: an extra decides
    assert "onnxruntime-gpu" not in GPU.read_text().split("RUN pip install")[1].split("\n")[0]


def test_the_endpoint_runs_unprivileged_in_an_empty_working_directory() -> None:
    # Before: root, with the working directory at / (a graph reading relative paths, or a
    # request reaching a file, saw the whole system).
    steps = instructions(GPU)
    users = [rest for keyword, rest in steps if keyword == "USER"]
    workdirs = [rest for keyword, rest in steps if keyword == "WORKDIR"]

    assert users, "the image must set a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert workdirs
    assert workdirs[-1] not in ("/", "/opt/ml/model", "/tmp")
    # the user and the folder are made before they are used, the folder read-only to it
    made = next(rest for keyword, rest in steps if keyword == "RUN" and "useradd" in rest)
    assert f"--uid {user}" in made
    assert f"install -d -m 0555 -o root -g root {workdirs[-1]}" in made
    assert steps.index(("USER", users[-1])) < steps.index(("CMD", '["serve"]'))
