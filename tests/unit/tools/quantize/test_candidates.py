"""Candidates: which nodes the mixed-precision candidates keep back."""

from __future__ import annotations

from onnxkit_tools.quantize.candidates import mixed_keep_sets


def test_mixed_keep_sets_follow_the_measured_shares() -> None:
    ranking = [(["a"], 0.5), (["b"], 0.25), (["c", "d"], 0.15), (["e"], 0.1), (["f"], 0.0)]
    assert mixed_keep_sets(ranking, (0.5, 0.75, 0.9, 0.97)) == [
        ("a",),
        ("a", "b"),
        ("a", "b", "c", "d"),
        ("a", "b", "c", "d", "e"),
    ]
    assert mixed_keep_sets([(["a"], 0.0)]) == []
