"""ONNX export: the model passes onnx.checker and onnxruntime computes what predict computes, for every
activation, the three output kinds and both dtypes; the CLI, the estimators, errors and atomic writing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.errors import FileWriteError, GpubpValueError, OptionalDependencyError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _run(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": X})[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_onnxruntime_computes_predict(activation, loss, dtype, tmp_path, rng):
    net = gpubp.MLP([6, 9, 7, 4], activation=activation, loss=loss, dtype=dtype, seed=3, backend="numpy")
    path = net.to_onnx(tmp_path / "net.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8  # what opset 17 needs, no newer
    for rows in (1, 37):  # the batch dimension is dynamic
        X = rng.normal(0, 3, (rows, 6)).astype(dtype)
        out = _run(path, X)
        expected = net.predict(X)
        assert out.dtype == np.dtype(dtype) and out.shape == (rows, 4)
        np.testing.assert_allclose(out, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("opset, gelu_node", [(17, False), (20, True)])
def test_gelu_is_an_operator_from_opset_20(opset, gelu_node, tmp_path, rng):
    net = gpubp.MLP([3, 5, 2], activation="gelu", loss="mse", dtype="float32", seed=0, backend="numpy")
    path = net.to_onnx(tmp_path / "gelu.onnx", opset=opset)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("Gelu" in ops) == gelu_node
    X = rng.normal(0, 2, (9, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(path, X), net.predict(X), rtol=1e-5, atol=1e-6)


def test_model_records_the_network(tmp_path):
    net = gpubp.MLP([4, 3, 2], activation=["relu"], loss="bce", backend="numpy")
    model = onnx.load(str(net.to_onnx(tmp_path / "n.onnx")))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["gpubp_config"]) == json.loads(json.dumps(net.config()))
    assert props["gpubp_version"] == gpubp.__version__ and model.producer_name == "gpubp"
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]


def test_bad_opset_and_path_leave_the_previous_file(tmp_path):
    net = gpubp.MLP([4, 3, 2], loss="cross_entropy", backend="numpy")
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"previous")
    for opset in (13, onnx.defs.onnx_opset_version() + 1, 17.0):
        with pytest.raises(GpubpValueError, match="opset must be an integer from 17 to"):
            net.to_onnx(target, opset=opset)
    assert target.read_bytes() == b"previous"
    with pytest.raises((FileWriteError, GpubpValueError), match="missing"):
        net.to_onnx(tmp_path / "missing" / "x.onnx")


def test_missing_onnx_names_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(OptionalDependencyError, match=r'pip install "gpubp\[onnx\]"'):
        gpubp.MLP([2, 2], backend="numpy").to_onnx("x.onnx")


def test_cli_export(tmp_path, rng):
    net = gpubp.MLP([5, 8, 3], activation="tanh", loss="cross_entropy", backend="numpy", seed=1)
    net.save(tmp_path / "model.npz")
    out = tmp_path / "model.onnx"
    result = subprocess.run([sys.executable, "-m", "gpubp.cli", "export", str(tmp_path / "model.npz"),
                             "--onnx", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "opset 17" in result.stdout
    X = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(out, X), net.predict(X), rtol=1e-5)
    bad = subprocess.run([sys.executable, "-m", "gpubp.cli", "export", str(tmp_path / "model.npz"),
                          "--onnx", str(tmp_path / "model.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--onnx must name a .onnx file" in bad.stderr


def test_fitted_estimators_export(tmp_path, rng):
    sklearn_mod = pytest.importorskip("gpubp.sklearn")
    X = rng.normal(size=(60, 4))
    classifier = sklearn_mod.MLPClassifier((6,), max_iter=20, random_state=0, backend="numpy")
    regressor = sklearn_mod.MLPRegressor((6,), max_iter=20, random_state=0, backend="numpy")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier.fit(X, np.array(["a", "b", "c"])[rng.integers(0, 3, 60)])
        regressor.fit(X, rng.normal(size=60))
    np.testing.assert_allclose(_run(classifier.to_onnx(tmp_path / "c.onnx"), X), classifier.predict_proba(X),
                               rtol=1e-12)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "c.onnx")).metadata_props}
    assert json.loads(props["classes"]) == ["a", "b", "c"] and props["sklearn_estimator"] == "MLPClassifier"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        binary = sklearn_mod.MLPClassifier((6,), max_iter=20, random_state=0, backend="numpy", dtype="float32")
        binary.fit(X, rng.integers(0, 2, 60) > 0)
    path = binary.to_onnx(tmp_path / "b.onnx")  # predict_proba's two columns, in float32
    out = _run(path, X.astype(np.float32))
    assert out.shape == (60, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, binary.predict_proba(X), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_run(regressor.to_onnx(tmp_path / "r.onnx"), X)[:, 0], regressor.predict(X),
                               rtol=1e-12)
