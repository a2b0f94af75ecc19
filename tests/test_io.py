"""Save/load: round trips, across backends, and clear errors for files that are not gpubp models."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest

import gpubp
from gpubp.errors import GpubpValueError


@pytest.mark.parametrize("loss,activation", [("cross_entropy", ["gelu", "relu"]), ("mse", "sigmoid"),
                                             ("bce", "elu")])
def test_round_trip(backend, tmp_path, rng, loss, activation):
    net = gpubp.MLP([5, 7, 6, 3], activation=activation, loss=loss, backend=backend, dtype="float64", seed=1)
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = gpubp.load(path, backend=backend)
    assert loaded.config() == net.config()
    for a, b in zip(net.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    X = rng.normal(size=(4, 5))
    np.testing.assert_array_equal(net.predict(X), loaded.predict(X))


def test_load_onto_numpy_from_any_backend(backend, tmp_path):
    net = gpubp.MLP([3, 4, 2], backend=backend, seed=0)
    net.save(tmp_path / "m.npz")
    loaded = gpubp.load(str(tmp_path / "m.npz"), backend="numpy")
    assert loaded.backend.name == "numpy" and loaded.dtype == np.float32


def test_file_is_plain_npz_without_pickle(tmp_path):
    net = gpubp.MLP([3, 4, 2], loss="cross_entropy", backend="numpy", seed=0)
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        metadata = json.loads(str(archive["metadata"]))
        assert archive["params"].shape == (net.n_params,)
    assert metadata["format"] == "gpubp.mlp" and metadata["version"] == 1
    assert metadata["sizes"] == [3, 4, 2] and metadata["output_activation"] == "softmax"


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.npz"
    gpubp.MLP([3, 4, 2], backend="numpy", seed=0).save(path)
    second = gpubp.MLP([3, 4, 2], backend="numpy", seed=1)
    second.save(path)
    np.testing.assert_array_equal(gpubp.load(path, backend="numpy").get_weights()[0], second.get_weights()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    first = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    first.save(path)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    from gpubp.errors import FileWriteError

    with pytest.raises(FileWriteError, match=f"cannot write {re.escape(repr(str(path)))} .*untouched.*disk full"):
        gpubp.MLP([3, 4, 2], backend="numpy", seed=1).save(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(gpubp.load(path, backend="numpy").get_weights()[0], first.get_weights()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"not a zip file at all"),
     r"is not a gpubp file \(an .npz archive\): it holds text starting with 'not a zip file at all'"),
    (lambda p: p.write_bytes(b"PK\x03\x04 but cut short"), "is not a readable .npz file"),
    (lambda p: np.save(open(p, "wb"), np.zeros(3)), "a single NumPy array"),
    (lambda p: p.write_bytes(b""), r"it holds nothing \(it is empty\)"),
    (lambda p: _write_npz(p, weights=np.zeros(3)),
     r"is not a gpubp model: it has no 'metadata' array, only \['weights'\]"),
    (lambda p: _write_npz(p, weights=np.zeros(3), metadata=np.array(json.dumps({"format": "gpubp.mlp"}))),
     r"is not a gpubp model: expected arrays \['metadata', 'params'\]"),
    (lambda p: _write_npz(p, params=np.zeros(3), metadata=np.array("{not json")), "metadata is not valid JSON"),
    (lambda p: _write_npz(p, params=np.zeros(3), metadata=np.array(json.dumps({"format": "other"}))),
     "is not a gpubp model file"),
    (lambda p: _write_npz(p, params=np.zeros(3), metadata=np.array(json.dumps({"format": "gpubp.mlp", "version": 99}))),
     "has model format version 99"),
    (lambda p: _write_npz(p, params=np.array([object()], dtype=object), metadata=np.array("{}")),
     "pickled data is never loaded"),
])
def test_foreign_and_corrupt_files(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(GpubpValueError, match=message):
        gpubp.load(path, backend="numpy")


def test_wrong_parameter_count_and_truncation(tmp_path):
    path = tmp_path / "m.npz"
    gpubp.MLP([3, 4, 2], backend="numpy", seed=0).save(path)
    with np.load(path) as archive:
        metadata = archive["metadata"]
    _write_npz(tmp_path / "short.npz", params=np.zeros(5, dtype=np.float32), metadata=metadata)
    with pytest.raises(GpubpValueError, match=r"params has shape \(5,\) .* needs shape \(26,\) and dtype float32"):
        gpubp.load(tmp_path / "short.npz", backend="numpy")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(GpubpValueError, match="cut.npz"):
        gpubp.load(tmp_path / "cut.npz", backend="numpy")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(GpubpValueError, match="does not exist"):
        gpubp.load(tmp_path / "nope.npz")
    with pytest.raises(GpubpValueError, match="is a directory"):
        gpubp.MLP([2, 2], backend="numpy").save(tmp_path)


def test_saving_into_a_missing_directory_names_the_path_given(tmp_path):
    from gpubp.errors import FileWriteError, GpubpError

    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    target = tmp_path / "no-such-dir" / "model.npz"
    with pytest.raises(FileWriteError) as info:
        net.save(target)
    assert isinstance(info.value, GpubpError) and isinstance(info.value, OSError)
    assert str(target) in str(info.value) and "does not exist" in str(info.value)
    assert ".tmp" not in str(info.value)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_created_with_the_umask_like_any_other(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        gpubp.MLP([3, 4, 2], backend="numpy", seed=0).save(tmp_path / "m.npz")
        X, y = gpubp.data.xor(40)
        gpubp.MLP([2, 4, 2], loss="cross_entropy", backend="numpy", seed=0).fit(
            X, y, epochs=1, progress=False, checkpoint=tmp_path / "ck.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "ck.npz").st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "m.npz"]  # no temporary files left


def test_a_text_file_is_not_a_gpubp_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("meeting at 10\n")
    with pytest.raises(GpubpValueError, match="is not a gpubp file .*text starting with 'meeting at 10") as info:
        gpubp.load(notes, backend="numpy")
    assert "allow_pickle" not in str(info.value)


def test_load_checkpoint_unpacks_as_documented(tmp_path):
    from gpubp.io import load_checkpoint

    X, y = gpubp.data.xor(40)
    net = gpubp.MLP([2, 4, 2], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=2, progress=False, checkpoint=tmp_path / "ck.npz")
    loaded, optimizer, progress = load_checkpoint(tmp_path / "ck.npz", backend="numpy")
    state = load_checkpoint(tmp_path / "ck.npz", backend="numpy")
    assert progress["epoch"] == state.progress["epoch"] == 2 and optimizer.steps == state.optimizer.steps
    np.testing.assert_array_equal(loaded.get_weights()[0], net.get_weights()[0])


def test_overwriting_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "m.npz"
    gpubp.MLP([3, 4, 2], backend="numpy", seed=0).save(path)
    os.chmod(path, 0o600)  # the user made it private
    gpubp.MLP([3, 4, 2], backend="numpy", seed=1).save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_text_cut_in_the_middle_of_a_character_is_still_called_text(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(("x" * 63 + "é and more").encode("utf-8"))  # the 64-byte head ends inside "é"
    with pytest.raises(GpubpValueError, match="it holds text starting with 'xxx"):
        gpubp.load(notes, backend="numpy")
