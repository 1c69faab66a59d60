"""scripts/bench_codecs.py: both bodies decode to the image, and a short run prints its table."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("bench_codecs", REPO / "scripts" / "bench_codecs.py")
assert spec is not None
assert spec.loader is not None
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def test_both_bodies_decode_to_the_image_and_binary_is_four_bytes_a_value() -> None:
    image = np.random.default_rng(3).standard_normal(bench.SHAPE).astype(np.float32)

    forms = bench.bodies(image)

    assert sorted(forms) == ["binary", "json"]
    for body, header in forms.values():
        np.testing.assert_array_equal(bench.decode(body, header), image)
    body, header = forms["binary"]
    assert len(body) - int(header) == 4 * image.size


def test_a_block_holds_as_many_calls_as_fill_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a clock that only calls move, 4 ms each
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

    def call() -> None:
        now[0] += 0.004

    # THEN 1 and 2 calls fall short of 10 ms, 5 fill it; 30 ms takes 10
    assert bench.block_size(call, 10.0) == 5
    assert bench.block_size(call, 30.0) == 10
    assert bench.block_size(call, 4.0) == 1


def test_a_short_run_prints_both_forms_and_the_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_codecs.py", "--rounds", "1", "--block-ms", "1"])

    assert bench.main() == 0

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert sorted(rows) == ["binary", "json"]
    assert rows["binary"][2] == "4.00"
    assert lines[-1].startswith("JSON / binary (ratio of medians): ")


@pytest.mark.parametrize("option", [["--rounds", "0"], ["--block-ms", "0"]])
def test_rounds_and_block_length_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, option: list[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_codecs.py", *option])

    with pytest.raises(SystemExit) as caught:
        bench.main()

    assert caught.value.code == 2
