"""scripts/gpu_check.py's own logic: the CUDA verdict and the parts' verification."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
assert spec is not None
assert spec.loader is not None
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

GOOD = {
    "available_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort_cuda_version": "13.0",
    "torch_cuda": "13.0",
    "session_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"available_providers": ["CPUExecutionProvider"]}, "offers no CUDA provider"),
        ({"ort_cuda_version": "12.8"}, "wants CUDA 12, the machine has CUDA 13"),
        ({"session_providers": ["CPUExecutionProvider"]}, "fell back to CPU"),
        ({"session_error": "libcudnn.so.9: cannot open"}, "could not be created"),
        ({"import_error": "ImportError"}, "does not import"),
    ],
)
def test_cuda_verdict_says_exactly_why(change: dict, reason: str | None) -> None:
    verdict = gpu_check.cuda_verdict({**GOOD, **change})
    if reason is None:
        assert verdict is None
    else:
        assert reason in verdict


def make_stage(tmp_path: Path) -> Path:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "data.bin").write_bytes(bytes(range(256)) * 1000)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="payload")
    stage = tmp_path / "stage"
    stage.mkdir()
    raw, parts = archive.read_bytes(), []
    for i in range(0, len(raw), 100_000):
        part = stage / f"part-{i // 100_000:02d}"
        part.write_bytes(raw[i : i + 100_000])
        parts.append({"name": part.name, "bytes": part.stat().st_size,
                      "sha256": gpu_check.sha256(part)})  # fmt: skip
    plan = {"archive_sha256": gpu_check.sha256(archive), "parts": parts}
    (stage / "plan.json").write_text(json.dumps(plan))
    return stage


def test_parts_reassemble_into_the_payload(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    payload = gpu_check.unpack(stage, work)
    assert (payload / "data.bin").read_bytes() == bytes(range(256)) * 1000


def test_a_damaged_or_missing_part_is_named(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    (tmp_path / "w1").mkdir()
    damaged = bytearray((stage / "part-01").read_bytes())
    damaged[0] ^= 1
    (stage / "part-01").write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="part-01 is damaged"):
        gpu_check.unpack(stage, tmp_path / "w1")
    (stage / "part-01").unlink()
    (tmp_path / "w2").mkdir()
    with pytest.raises(SystemExit, match=r"missing .*part-01"):
        gpu_check.unpack(stage, tmp_path / "w2")
