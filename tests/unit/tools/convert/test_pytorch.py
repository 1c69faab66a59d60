"""onnxkit convert on PyTorch modules built here: the written model is checked against torch
itself at other batch sizes and lengths, and broken exports are clear errors with nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxkit.session import load_session
from onnxkit_tools.cli import main
from onnxkit_tools.convert import ConvertError, convert_model

torch = pytest.importorskip("torch", reason="torch is not installed (the examples extra)")


class Tagger(torch.nn.Module):
    """Token ids (and a mask) -> per-token scores and the best tag per token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.score = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
        scores = self.score(self.embed(input_ids)) * attention_mask.unsqueeze(-1)
        return scores, scores.argmax(-1)


class Baked(torch.nn.Module):
    """Reshapes with the traced length as a Python int: right at that length only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)

    def forward(self, input_ids):  # type: ignore[no-untyped-def]
        hidden = self.embed(input_ids)
        length = int(hidden.shape[1])
        return hidden.reshape(hidden.shape[0], length * 8)[:, :8]


class Eigen(torch.nn.Module):
    """An operator the ONNX exporter has no translation for."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):  # type: ignore[no-untyped-def]
        a = self.linear(x)
        return torch.linalg.eigvalsh(a.T @ a)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def baked() -> torch.nn.Module:
    return Baked()


def eigen() -> torch.nn.Module:
    return Eigen()


HERE = __name__


def test_a_module_from_a_factory_answers_like_torch_at_any_batch(tmp_path: Path) -> None:
    # GIVEN an MLP built by the user's code, WHEN it is converted with generated rows
    report = convert_model(f"{HERE}:mlp", tmp_path / "model.onnx")
    # THEN onnxruntime answers like torch at batch sizes the export never saw
    session = load_session(tmp_path / "model.onnx", intra_op_threads=1)
    module = mlp().eval()
    for rows in (1, 5, 100):
        x = np.random.default_rng(rows).normal(size=(rows, 8)).astype(np.float32)
        (got,) = session.run(None, {"input": x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert report.framework == "pytorch"
    assert report.inputs[0]["shape"] == ["batch", 8]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_token_inputs_get_dynamic_batch_and_sequence_axes(tmp_path: Path) -> None:
    # GIVEN a two-input tagger and a sample naming both inputs
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (6, 11), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[:, 8:] = 0
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask)
    module = Tagger()
    torch.jit.script(module).save(str(tmp_path / "tagger.ts"))
    # WHEN the TorchScript archive is converted (no pickle involved)
    code = main(
        [
            "convert",
            str(tmp_path / "tagger.ts"),
            "--sample",
            str(tmp_path / "tokens.npz"),
            "--out",
            str(tmp_path / "tagger.onnx"),
        ]
    )
    assert code == 0
    # THEN another batch size and length answer like torch, tags identical
    session = load_session(tmp_path / "tagger.onnx", intra_op_threads=1)
    ids2 = rng.integers(0, 50, (3, 29), dtype=np.int64)
    mask2 = np.ones_like(ids2)
    scores, tags = session.run(None, {"input_ids": ids2, "attention_mask": mask2})
    with torch.no_grad():
        want_scores, want_tags = module(torch.from_numpy(ids2), torch.from_numpy(mask2))
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(tags, want_tags.numpy())
    # ... and the report shows the parity at the shorter length it checked too
    written = json.loads((tmp_path / "tagger.conversion.json").read_text())
    checked = [o["name"] for o in written["parity"]["outputs"]]
    assert checked == ["output_0", "output_1", "output_0@sequence=10", "output_1@sequence=10"]
    assert [i["shape"] for i in written["inputs"]] == [["batch", "sequence"]] * 2


def test_a_shape_baked_in_by_the_trace_is_caught(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="fails at sequence=12"):
        convert_model(f"{HERE}:baked", tmp_path / "model.onnx")

    assert list(tmp_path.iterdir()) == []


def test_a_static_axis_fed_another_size_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the batch axis declared static: the export sees 64 rows, the check feeds 1
    code = main(
        ["convert", f"{HERE}:mlp", "--dynamic-axes", "input=", "--out", str(tmp_path / "m.onnx")]
    )

    assert code == 1
    assert "Is an axis fixed that should be dynamic?" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_operator_without_an_onnx_translation_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"could not export Eigen.*eigvalsh"):
        convert_model(f"{HERE}:eigen", tmp_path / "model.onnx")

    assert not (tmp_path / "model.onnx").exists()


def test_a_pickled_module_needs_allow_pickle_and_a_state_dict_needs_code(tmp_path: Path) -> None:
    module = mlp()
    torch.save(module, tmp_path / "whole.pt")
    torch.save(module.state_dict(), tmp_path / "weights.pt")

    with pytest.raises(ConvertError, match="--allow-pickle"):
        convert_model(str(tmp_path / "whole.pt"), tmp_path / "a.onnx")
    with pytest.raises(ConvertError, match="weights only"):
        convert_model(str(tmp_path / "weights.pt"), tmp_path / "b.onnx")
    report = convert_model(str(tmp_path / "whole.pt"), tmp_path / "c.onnx", allow_pickle=True)

    assert report.parity.passed
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["c.onnx"]


def test_weights_can_go_to_external_data_and_are_published_with_the_graph(
    tmp_path: Path,
) -> None:
    # GIVEN the MLP converted with its weights outside the graph (as past 1.5 GB)
    report = convert_model(f"{HERE}:mlp", tmp_path / "out" / "model.onnx", external=True)
    # THEN the graph and MODEL.onnx.data are written, nothing else is left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.conversion.json",
        "model.onnx",
        "model.onnx.data",
    ]
    assert (tmp_path / "out" / "model.onnx").stat().st_size < 2_000  # the graph alone
    assert report.notes == ["weights in model.onnx.data (external data)"]
    # ... onnxruntime reads it from the folder and answers like torch
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    (got,) = load_session(tmp_path / "out" / "model.onnx", intra_op_threads=1).run(
        None, {"input": x}
    )
    with torch.no_grad():
        np.testing.assert_allclose(got, mlp().eval()(torch.from_numpy(x)).numpy(), atol=1e-5)
    # ... and publishing describes both files
    from onnxkit_tools.registry import describe_model

    manifest = describe_model(tmp_path / "out" / "model.onnx", name="mlp", version="1")
    assert [f.path for f in manifest.files] == ["model.onnx", "model.onnx.data"]
