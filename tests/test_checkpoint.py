"""Checkpoints: what they hold, exact resume in a new process, refusals, and survival of kill -9 mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.errors import GpubpValueError
from gpubp.io import load_checkpoint
from gpubp.optim import SGD, Adam

ROOT = Path(__file__).resolve().parents[1]

RUN = textwrap.dedent("""
    import sys, numpy as np, gpubp
    from gpubp.optim import Adam, AdamW, SGD
    X, y = gpubp.data.spirals(600, n_classes=3, seed=0)
    CRASH_AT = None
    def schedule(epoch):  # StepLR(2, 0.5) of a base rate of 0.01, and a crash where the test wants one
        if epoch == CRASH_AT:
            raise KeyboardInterrupt(f"interrupted before epoch {epoch}")
        return 0.01 * 0.5 ** ((epoch - 1) // 2)
    def run(epochs, checkpoint=None, resume=False, optimizer="adam"):
        net = gpubp.MLP([2, 24, 24, 3], activation=["gelu", "relu"], loss="cross_entropy", backend="numpy",
                        seed=0)
        make = {"adam": lambda: Adam(0.01), "adamw": lambda: AdamW(0.01),
                "sgd": lambda: SGD(0.05, momentum=0.9, nesterov=True)}[optimizer]
        history = net.fit(X, y, epochs=epochs, batch_size=32, optimizer=make(), validation_split=0.1, seed=7,
                          lr_schedule=schedule, early_stopping=50, progress=False,
                          checkpoint=checkpoint, resume=resume)
        return net, history
""")


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, optimizer):
    """A run of 6 epochs interrupted after 3 (checkpointed), then resumed in a new process: the same weights,
    bit for bit, as 6 epochs straight (same seed and data order; a schedule, a validation split and early
    stopping on)."""
    checkpoint, out = tmp_path / "ck.npz", tmp_path
    _python(RUN + textwrap.dedent(f"""
        CRASH_AT = 4
        try:
            run(6, {str(checkpoint)!r}, optimizer={optimizer!r})
        except KeyboardInterrupt:
            pass
    """))
    assert load_checkpoint(checkpoint, backend="numpy").progress["epoch"] == 3
    _python(RUN + textwrap.dedent(f"""
        net, history = run(6, {str(checkpoint)!r}, resume=True, optimizer={optimizer!r})
        np.savez({str(out / 'resumed.npz')!r}, *net.get_weights(), loss=np.array(history["loss"]))
        net, history = run(6, optimizer={optimizer!r})
        np.savez({str(out / 'straight.npz')!r}, *net.get_weights(), loss=np.array(history["loss"]))
    """))
    with np.load(out / "resumed.npz") as resumed, np.load(out / "straight.npz") as straight:
        assert resumed.files == straight.files
        for name in resumed.files:
            np.testing.assert_array_equal(resumed[name], straight[name])
        assert len(resumed["loss"]) == 6


def _fit(net, optimizer, epochs, checkpoint, **kwargs):
    X, y = gpubp.data.spirals(300, n_classes=3, seed=1)
    return net.fit(X, y, epochs=epochs, batch_size=50, optimizer=optimizer, progress=False, seed=0,
                   checkpoint=checkpoint, **kwargs)


def _net():
    return gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend="numpy", seed=0)


def test_checkpoint_contents_and_load(tmp_path):
    path = tmp_path / "ck.npz"
    net, optimizer = _net(), Adam(0.01)
    _fit(net, optimizer, 4, path, checkpoint_every=2)
    state = load_checkpoint(path, backend="numpy")
    assert state.progress["epoch"] == 4 and state.progress["step"] == 4 * 6
    assert state.optimizer.steps == optimizer.steps == 24 and isinstance(state.optimizer, Adam)
    for name in ("m", "v"):
        np.testing.assert_array_equal(state.optimizer.state[name], optimizer.state[name])
    assert "scratch" not in state.optimizer.state
    for a, b in zip(state.net.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(state.progress["history"]["records"]) == 4
    loaded = gpubp.load(path, backend="numpy")  # a checkpoint is also a model file
    np.testing.assert_array_equal(loaded.get_weights()[0], net.get_weights()[0])
    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(str(archive["metadata"]))
    assert metadata["format"] == "gpubp.checkpoint" and metadata["version"] == 2
    assert set(metadata["arrays"]) == {"params", "optimizer.m", "optimizer.v"}


def test_checkpoint_every_k_epochs(tmp_path, monkeypatch):
    written = []
    import gpubp.checkpoint

    real = gpubp.checkpoint.save_checkpoint
    monkeypatch.setattr(gpubp.checkpoint, "save_checkpoint", lambda path, net, opt, progress, best=None: (
        written.append(progress["epoch"]), real(path, net, opt, progress, best))[1])
    _fit(_net(), SGD(0.1), 7, tmp_path / "ck.npz", checkpoint_every=3)
    assert written == [3, 6, 7]  # every third epoch and the last


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    path = tmp_path / "ck.npz"
    net = _net()
    _fit(net, Adam(0.01), 3, path)
    again = gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend="numpy", seed=9)
    optimizer = Adam(0.01)
    history = _fit(again, optimizer, 3, path, resume=True)
    assert len(history) == 3 and optimizer.steps == 18
    for a, b in zip(again.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resume_without_a_file_starts_fresh(tmp_path):
    history = _fit(_net(), Adam(0.01), 2, tmp_path / "new.npz", resume=True)
    assert len(history) == 2 and (tmp_path / "new.npz").is_file()


@pytest.mark.parametrize("change,message", [
    (dict(net=lambda: gpubp.MLP([2, 9, 3], activation="tanh", loss="cross_entropy", backend="numpy", seed=0)),
     "is of a different network"),
    (dict(optimizer=lambda: SGD(0.1)), "holds Adam state, this optimizer is a SGD"),
    (dict(batch_size=25), "batch_size=50, this fit has batch_size=25"),
    (dict(X=300 - 1), "n_train=300, this fit has n_train=299"),
])
def test_resume_refusals_change_nothing(tmp_path, change, message):
    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 2, path)
    net = change.get("net", _net)()
    optimizer = change.get("optimizer", lambda: Adam(0.01))()
    before = net.get_weights()
    X, y = gpubp.data.spirals(300, n_classes=3, seed=1)
    n = change.get("X", 300)
    with pytest.raises(GpubpValueError, match=message):
        net.fit(X[:n], y[:n], epochs=4, batch_size=change.get("batch_size", 50), optimizer=optimizer,
                progress=False, seed=0, checkpoint=path, resume=True)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert optimizer.steps == 0 and not optimizer.state


def test_resume_needs_a_path():
    with pytest.raises(GpubpValueError, match="resume=True needs checkpoint=PATH"):
        _fit(_net(), Adam(0.01), 1, None, resume=True)


def _tamper(path, out, edit_metadata=None, drop=None, replace=None):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(str(arrays.pop("metadata")))
    if edit_metadata:
        edit_metadata(metadata)
    if drop:
        arrays.pop(drop)
    if replace:
        arrays.update(replace)
    np.savez(out, metadata=np.array(json.dumps(metadata)), **arrays)
    return out


@pytest.mark.parametrize("damage,message", [
    (lambda p, o: o.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is not a readable .npz file"),
    (lambda p, o: o.write_bytes(b"\0" * 1000), r"is not a gpubp file .* binary data starting with b'\\x00"),
    (lambda p, o: _tamper(p, o, drop="optimizer.v"), r"declares arrays .* but holds"),
    (lambda p, o: _tamper(p, o, replace={"optimizer.m": np.zeros(3, np.float32)}),
     r"array 'optimizer.m' has shape \[3\]"),
    (lambda p, o: _tamper(p, o, replace={"params": np.zeros(59, np.float64)}), "array 'params' has shape"),
    (lambda p, o: _tamper(p, o, edit_metadata=lambda m: m.update(version=1)), "checkpoint format version 1"),
    (lambda p, o: _tamper(p, o, edit_metadata=lambda m: m.pop("progress")), "checkpoint metadata lacks 'progress'"),
    (lambda p, o: _tamper(p, o, edit_metadata=lambda m: m["optimizer"].update({"class": "Lion"})),
     "unknown optimizer class 'Lion'"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, message):
    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 1, path)
    bad = tmp_path / "bad.npz"
    damage(path, bad)
    with pytest.raises(GpubpValueError, match=message):
        load_checkpoint(bad, backend="numpy")
    net, optimizer = _net(), Adam(0.01)
    with pytest.raises(GpubpValueError):
        _fit(net, optimizer, 2, bad, resume=True)
    assert optimizer.steps == 0


WRITER = textwrap.dedent("""
    import sys, numpy as np, gpubp
    from gpubp.io import save_checkpoint
    from gpubp.optim import Adam
    net = gpubp.MLP([1000, 2000, 10], backend="numpy", seed=0)  # 2 M parameters: ~8 MB per array
    optimizer = Adam(1e-3)
    optimizer._buffers(net.backend, net.params)
    k = 0
    while True:
        k += 1
        net.params.fill(k)
        optimizer.state["m"].fill(k)
        optimizer.state["v"].fill(k)
        optimizer.state["steps"][0] = k  # the step count lives beside the moments, on the device
        save_checkpoint(sys.argv[1], net, optimizer, {"epoch": k})
        print(k, flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    """A writer saves 24 MB checkpoints in a loop; it is killed with SIGKILL at random moments, ten times.
    Every time, the file on disk loads and is complete and consistent (one k throughout). Killed writers
    may leave their temporary files (``.ck.npz.*.tmp``) beside it; never a damaged ``ck.npz``."""
    path = tmp_path / "ck.npz"
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert writer.stdout.readline().strip() == "1"  # at least one complete save
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        state = load_checkpoint(path, backend="numpy")
        k = state.progress["epoch"]
        assert k >= 1 and state.optimizer.steps == k
        for array in (np.asarray(state.net.params), state.optimizer.state["m"], state.optimizer.state["v"]):
            assert np.all(array == k)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck.npz"]
    assert all(name.startswith(".ck.npz.") and name.endswith(".tmp") for name in leftovers)
    assert len(leftovers) >= 3, "too few kills landed in the middle of a write for this test to mean anything"


def test_resume_refuses_non_finite_parameters(tmp_path):
    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 1, path)
    with np.load(path, allow_pickle=False) as archive:
        params = archive["params"].copy()
    params[3] = np.nan
    bad = _tamper(path, tmp_path / "nan.npz", replace={"params": params})
    net, optimizer = _net(), Adam(0.01)
    before = net.get_weights()
    with pytest.raises(GpubpValueError, match="holds non-finite parameters"):
        _fit(net, optimizer, 2, bad, resume=True)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert optimizer.steps == 0
