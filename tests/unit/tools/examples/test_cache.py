"""Example build caches: keys follow the builder's source, and only complete builds are reused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from onnxkit_tools.examples import cache, digits, minilm


@pytest.fixture
def throwaway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A package on sys.path, unique to the test: ``__init__.py``, ``a.py`` and ``sub/b.py``."""
    name = f"throwaway_{uuid.uuid4().hex}"
    package = tmp_path / name
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""A package made by a test."""\n')
    (package / "a.py").write_text("VALUE = 1\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    return 'b'\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    return name, package


def flip_one_byte(path: Path) -> bytes:
    """Change the last byte of a file; return the original content."""
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    return original


def test_a_package_digest_covers_every_py_file_in_sorted_order(throwaway: tuple[str, Path]) -> None:
    name, _ = throwaway

    names = [entry for entry, _ in cache.source_files(name)]

    assert names == ["__init__.py", "a.py", "sub/__init__.py", "sub/b.py"]


def test_the_digest_is_stable_while_the_source_is(throwaway: tuple[str, Path]) -> None:
    name, package = throwaway
    # GIVEN the digest of the package
    before = cache.source_digest(name)
    # WHEN nothing Python would import changes: a repeat call, a data file, an editor lock file
    (package / "notes.txt").write_text("not source")
    (package / ".#a.py").write_text("an editor's lock")
    # THEN the digest is the same
    assert cache.source_digest(name) == before
    assert cache.source_digests([name]) == {name: before}


@pytest.mark.parametrize("relative", ["a.py", "sub/b.py", "__init__.py"])
def test_one_byte_of_any_file_changes_the_digest(
    throwaway: tuple[str, Path], relative: str
) -> None:
    name, package = throwaway
    before = cache.source_digest(name)

    original = flip_one_byte(package / relative)
    changed = cache.source_digest(name)
    (package / relative).write_bytes(original)

    assert changed != before
    # content, not modification time: the restored file digests as before
    assert cache.source_digest(name) == before


def test_adding_or_renaming_a_file_changes_the_digest(throwaway: tuple[str, Path]) -> None:
    name, package = throwaway
    before = cache.source_digest(name)

    (package / "sub" / "c.py").write_text("")
    added = cache.source_digest(name)
    (package / "sub" / "c.py").rename(package / "sub" / "d.py")
    renamed = cache.source_digest(name)

    assert len({before, added, renamed}) == 3


def test_a_plain_module_digests_its_own_file(throwaway: tuple[str, Path]) -> None:
    name, package = throwaway
    module = f"{name}.sub.b"
    before = cache.source_digest(module)

    # a sibling module is no part of it
    (package / "a.py").write_text("VALUE = 2\n")
    assert cache.source_digest(module) == before
    flip_one_byte(package / "sub" / "b.py")
    assert cache.source_digest(module) != before


def test_a_missing_module_is_an_error_not_an_empty_digest() -> None:
    with pytest.raises(LookupError, match="not found"):
        cache.source_digest(f"missing_{uuid.uuid4().hex}")


def test_only_a_complete_build_with_the_same_key_is_cached(tmp_path: Path) -> None:
    # GIVEN a folder with both outputs, marked complete with a key holding a tuple
    key = {"seq_len": 128, "shape": (1, 2), "sources": {"m": "0" * 64}}
    for name in ("model.onnx", "report.json"):
        (tmp_path / name).write_text("{}")
    cache.write_key(tmp_path, key)
    outputs = ("model.onnx", "report.json")

    # THEN the same key hits (the tuple compares equal to the list JSON stored)
    assert cache.is_cached(tmp_path, key, outputs)
    # AND another source digest or a missing output misses
    assert not cache.is_cached(tmp_path, {**key, "sources": {"m": "1" * 64}}, outputs)
    assert not cache.is_cached(tmp_path, key, (*outputs, "calibration.npz"))
    # AND a cleared key (a build in progress) or a torn key file misses
    cache.clear_key(tmp_path)
    assert not cache.is_cached(tmp_path, key, outputs)
    (tmp_path / cache.KEY_FILE).write_text('{"seq_len": 1')
    assert not cache.is_cached(tmp_path, key, outputs)


def test_the_minilm_key_follows_its_sources(
    throwaway: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the MiniLM key over a throwaway package standing in for its sources
    name, package = throwaway
    monkeypatch.setattr(minilm, "BUILD_SOURCES", (name,))
    monkeypatch.setattr(minilm, "BUILD_PACKAGES", ("numpy",))
    key = minilm.build_key(128)
    assert key == minilm.build_key(128)

    # WHEN one byte of the source changes
    flip_one_byte(package / "sub" / "b.py")

    # THEN the key changes
    assert minilm.build_key(128) != key


def test_the_real_keys_digest_the_builders_themselves() -> None:
    assert "onnxkit_tools.examples.minilm" in minilm.BUILD_SOURCES
    key = digits.build_key()
    assert set(key["sources"]) == set(digits.BUILD_SOURCES)
    assert key["sources"]["onnxkit_tools.examples.digits"] == cache.source_digest(
        "onnxkit_tools.examples.digits"
    )
    assert "onnxkit_tools.quantize" in key["sources"]
    assert set(key["versions"]) == {
        "scikit-learn",
        "skl2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "pillow",
    }


class FakeBuild:
    """Stands in for build_digits: writes every output, counts calls, can fail once."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self, out: Path, *, seed: int) -> dict[str, object]:
        self.calls += 1
        cache.clear_key(out)  # as build_digits does
        for name in digits._OUTPUTS:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(json.dumps({"seed": seed, "call": self.calls}))
        if self.fail:
            raise digits.QualityGateError("no candidate passed")
        return {}


def test_cached_digits_rebuilds_when_its_source_changes_and_never_reuses_a_failed_build(
    throwaway: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # GIVEN cached_digits keyed by a throwaway package, with a fake build
    name, package = throwaway
    monkeypatch.setattr(digits, "BUILD_SOURCES", (name,))
    build = FakeBuild()
    monkeypatch.setattr(digits, "build_digits", build)
    out = tmp_path / "digits"

    # WHEN it is called twice with the same source, THEN it builds once
    assert digits.cached_digits(out) == out
    digits.cached_digits(out)
    assert build.calls == 1

    # WHEN one byte of the source changes, THEN it builds again, once
    flip_one_byte(package / "a.py")
    digits.cached_digits(out)
    digits.cached_digits(out)
    assert build.calls == 2

    # WHEN a rebuild fails after writing every file, THEN the next call builds again
    flip_one_byte(package / "a.py")
    build.fail = True
    with pytest.raises(digits.QualityGateError):
        digits.cached_digits(out)
    build.fail = False
    digits.cached_digits(out)
    assert build.calls == 4
