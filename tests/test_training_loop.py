"""The training loop (gpubp.training): settings checked up front, the same run on resume, timings,
early-stopping state, the progress bar, and resume's all-or-nothing under memory pressure."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import interrupted_before

import gpubp
from gpubp import training
from gpubp.backends import NumpyBackend
from gpubp.errors import DeviceMemoryError, GpubpValueError
from gpubp.io import load_checkpoint
from gpubp.optim import SGD, Adam, AdamW


def _data(n=300, seed=1):
    return gpubp.data.spirals(n, n_classes=3, seed=seed)


def _net(backend="numpy", seed=0):
    return gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=seed)


def _fit(net, optimizer, epochs, checkpoint, **kwargs):
    X, y = _data()
    kwargs = {"batch_size": 50, "progress": False, "seed": 0, **kwargs}
    return net.fit(X, y, epochs=epochs, optimizer=optimizer, checkpoint=checkpoint, **kwargs)


# --- bug 1: a resume must be the same run -----------------------------------------------------------------
@pytest.mark.parametrize("first,then,message", [
    (dict(optimizer=Adam(1e-3), lr_schedule="cosine"), dict(optimizer=Adam(1e-1), lr_schedule="cosine"),
     r"optimizer lr=0.001, this fit's Adam has lr=0.1"),
    (dict(optimizer=Adam(1e-3), lr_schedule="cosine"), dict(optimizer=Adam(1e-3), lr_schedule="cosine", epochs=4),
     "epochs=2, this fit has epochs=4.*a run cannot be extended"),
    (dict(optimizer=Adam(1e-3)), dict(optimizer=Adam(1e-3, betas=(0.8, 0.999))), r"betas=\[0.9, 0.999\]"),
    (dict(optimizer=Adam(1e-3)), dict(optimizer=Adam(1e-3, eps=1e-6)), "eps=1e-08"),
    (dict(optimizer=AdamW(1e-3)), dict(optimizer=AdamW(1e-3, weight_decay=0.1)), "weight_decay=0.01"),
    (dict(optimizer=SGD(0.1, momentum=0.9)), dict(optimizer=SGD(0.1, momentum=0.5)), "momentum=0.9"),
    (dict(optimizer=SGD(0.1, momentum=0.9)), dict(optimizer=SGD(0.1, momentum=0.9, nesterov=True)),
     "nesterov=False"),
    (dict(optimizer=Adam(1e-3), lr_schedule="cosine"), dict(optimizer=Adam(1e-3), lr_schedule="step"),
     "lr_schedule=.*CosineLR.*this fit has lr_schedule=.*StepLR"),
    (dict(optimizer=Adam(1e-3), seed=0), dict(optimizer=Adam(1e-3), seed=1), "seed=0, this fit has seed=1"),
])
def test_resume_refuses_other_settings_and_changes_nothing(tmp_path, first, then, message):
    path = tmp_path / "ck.npz"
    first = {"epochs": 2, **first}
    _fit(_net(), first.pop("optimizer"), first.pop("epochs"), path, **first)
    net, optimizer = _net(seed=5), then.pop("optimizer")
    before = net.get_weights()
    with pytest.raises(GpubpValueError, match=message):
        _fit(net, optimizer, then.pop("epochs", 2), path, resume=True, **then)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert optimizer.steps == 0 and not optimizer.state


def test_a_lambda_schedule_is_compared_by_name(tmp_path):
    def halving(epoch):
        return 0.01 / epoch

    def other(epoch):
        return 0.01

    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 2, path, lr_schedule=halving)
    with pytest.raises(GpubpValueError, match="halving"):
        _fit(_net(), Adam(0.01), 2, path, resume=True, lr_schedule=other)
    history = _fit(_net(), Adam(0.01), 2, path, resume=True, lr_schedule=halving)  # the same run: finished
    assert len(history) == 2


# --- bug 2: validation_split with seed=None keeps its rows on resume -----------------------------------
def test_validation_split_without_a_seed_is_the_same_on_resume(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    X, y = _data(400)

    def run(**kwargs):
        net = _net()
        history = net.fit(X, y, epochs=4, batch_size=40, optimizer=Adam(0.01), validation_split=0.25,
                          progress=False, checkpoint=kwargs.pop("checkpoint", None), **kwargs)
        return net, history

    interrupted_before(3, lambda: run(checkpoint=path), monkeypatch)  # seed=None: a seed is drawn, and recorded
    seed = load_checkpoint(path, backend="numpy").progress["seed"]
    assert isinstance(seed, int)
    resumed, resumed_history = run(checkpoint=path, resume=True)
    straight, straight_history = run(seed=seed)
    assert resumed_history["val_loss"] == straight_history["val_loss"]
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- bug 6 and early stopping as an object -------------------------------------------------------------
def test_best_weights_are_put_back_only_when_the_best_epoch_is_not_the_last(monkeypatch):
    X, y = _data()
    copies = []
    backend = NumpyBackend(threads=1)
    real_copy = backend.copy_into
    net = _net(backend)

    def copy_into(out, value):
        if out is net.params and isinstance(value, np.ndarray) and value.shape == net.params.shape:
            copies.append(True)
        real_copy(out, value)

    monkeypatch.setattr(backend, "copy_into", copy_into)
    history = net.fit(X, y, epochs=3, batch_size=50, optimizer=Adam(0.01), progress=False, seed=0,
                      early_stopping=10, monitor="loss")
    assert history.best_epoch == 3 and not copies  # improving to the end: the last weights are the best


def test_early_stopping_state_round_trip_and_checks():
    stopper = training.EarlyStopping("val_accuracy", patience=2, min_delta=0.0)
    assert stopper.update({"val_accuracy": 0.5}) and not stopper.update({"val_accuracy": 0.5})
    assert not stopper.should_stop and not stopper.update({"val_accuracy": 0.4}) and stopper.should_stop
    other = training.EarlyStopping("val_accuracy", patience=2, min_delta=0.0)
    other.load_state(stopper.state())
    assert other.state() == {"monitor": "val_accuracy", "best_value": 0.5, "waited": 2} and other.should_stop
    with pytest.raises(GpubpValueError, match="invalid early-stopping state"):
        other.load_state({"monitor": "val_accuracy", "best_value": "x", "waited": 0})
    with pytest.raises(GpubpValueError, match="watched 'loss', this fit monitors 'val_accuracy'"):
        other.load_state({"monitor": "loss", "best_value": 0.5, "waited": 0})


def test_resume_without_saved_best_weights_never_restores_garbage(tmp_path, monkeypatch):
    """A checkpoint written with restore_best=False has no best weights; resuming it with restore_best=True
    must not put an unfilled buffer into the network: with nothing better seen after the resume, the
    last weights stay, exactly as in a run that never restores."""
    X, y = _data()

    def run(path, restore_best):  # min_delta=10: only epoch 1 counts as an improvement; stops after epoch 4
        net = _net()
        history = net.fit(X, y, epochs=6, batch_size=50, optimizer=SGD(0.5), progress=False, seed=0,
                          checkpoint=path, resume=True, early_stopping=3, monitor="loss", min_delta=10.0,
                          restore_best=restore_best)
        return net, history

    interrupted_before(3, lambda: run(tmp_path / "ck.npz", False), monkeypatch)
    resumed, history = run(tmp_path / "ck.npz", True)
    assert history.best_epoch == 1 and history.stopped_epoch == 4
    never_restoring, _ = run(tmp_path / "other.npz", False)
    for a, b in zip(resumed.get_weights(), never_restoring.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_refused_early_stopping_state_changes_nothing(tmp_path):
    import json

    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 2, path, early_stopping=5, monitor="loss")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(str(arrays.pop("metadata")))
    metadata["progress"]["early_stopping"]["best_value"] = "x"
    np.savez(path, metadata=np.array(json.dumps(metadata)), **arrays)
    net, optimizer = _net(seed=4), Adam(0.01)
    before = net.get_weights()
    with pytest.raises(GpubpValueError, match="invalid early-stopping state"):
        _fit(net, optimizer, 2, path, resume=True, early_stopping=5, monitor="loss")
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert optimizer.steps == 0 and not optimizer.state


def test_a_numpy_integer_seed_is_recorded_as_a_number(tmp_path):
    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 1, path, seed=np.int64(3))
    assert load_checkpoint(path, backend="numpy").progress["seed"] == 3


# --- bug 7: time and samples/s are training only --------------------------------------------------------
def test_epoch_time_excludes_validation(monkeypatch):
    X, y = _data()
    net = _net()
    real = net.evaluate_checked

    def slow_evaluation(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(net, "evaluate_checked", slow_evaluation)
    history = net.fit(X[:200], y[:200], epochs=2, batch_size=50, optimizer=Adam(0.01), progress=False,
                      validation_data=(X[200:], y[200:]))
    assert all(t >= 0.3 for t in history["val_time"])
    assert all(t < 0.3 for t in history["time"])
    assert history["samples_per_s"] == pytest.approx([200 / t for t in history["time"]])


# --- FitConfig: every check before anything changes -----------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(resume="yes"), "resume must be True or False"),
    (dict(on_nonfinite="ignore"), "on_nonfinite must be one of"),
    (dict(check_every=0), "check_every must be >= 1"),
    (dict(checkpoint_every=0), "checkpoint_every must be >= 1"),
    (dict(lr_schedule="linear"), "unknown lr_schedule 'linear'"),
    (dict(progress="yes"), "progress must be True, False or 'lines', got 'yes'"),
])
def test_fit_config_refuses_bad_settings(kwargs, message):
    with pytest.raises((GpubpValueError, TypeError), match=message):
        training.FitConfig.build(**kwargs)


def test_fit_config_is_frozen():
    config = training.FitConfig.build(epochs=3)
    with pytest.raises(AttributeError):
        config.epochs = 4  # type: ignore[misc]
    assert isinstance(config.optimizer, Adam) and config.optimizer.lr == 1e-3


# --- the progress bar is closed however an epoch ends ----------------------------------------------------
def test_the_progress_bar_is_closed_when_an_epoch_raises(monkeypatch):
    closed = []

    class Bar:
        def __init__(self, **kwargs):
            pass

        def update(self, n):
            raise RuntimeError("interrupted mid-epoch")

        def close(self):
            closed.append(True)

    import sys

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the tqdm bar
    X, y = _data()
    with pytest.raises(RuntimeError, match="interrupted mid-epoch"):
        _net().fit(X, y, epochs=1, batch_size=50, optimizer=Adam(0.01), progress=True)
    assert closed == [True]


# --- bug 8: a resume that runs out of memory changes nothing --------------------------------------------
class FailingBackend(NumpyBackend):
    """NumPy, where the k-th allocation of ``size`` elements while ``armed`` runs out of memory."""

    def __init__(self, size):
        super().__init__(threads=1)
        self.size, self.fail_at, self.count, self.armed = size, None, 0, False

    def _allocation(self, shape):
        if self.armed and self.fail_at is not None and int(np.prod(shape)) == self.size:
            self.count += 1
            if self.count == self.fail_at:
                raise DeviceMemoryError("out of GPU memory (stand-in)", requested=self.size * 4, free=0, total=0)

    def empty(self, shape, dtype):
        self._allocation(shape)
        return super().empty(shape, dtype)

    def zeros(self, shape, dtype):
        self._allocation(shape)
        return super().zeros(shape, dtype)

    def asarray(self, value, dtype=None):
        self._allocation(np.shape(value))
        return super().asarray(value, dtype)


def test_a_resume_that_runs_out_of_memory_changes_nothing(tmp_path, monkeypatch):
    """Every parameter-sized allocation of fit's set-up and resume (best weights, the optimizer's state)
    is made to fail in turn: each time, weights and optimizer are as they were."""
    path = tmp_path / "ck.npz"
    real_init, real_restore = training._Run.__init__, training._Run.restore

    def set_up(run, model, *args):  # allocations fail only while fit sets up and resumes
        model.backend.armed = True
        try:
            real_init(run, model, *args)
        finally:
            model.backend.armed = False

    def restore(run, source):  # the resume happens here
        run.model.backend.armed = True
        try:
            real_restore(run, source)
        finally:
            run.model.backend.armed = False

    monkeypatch.setattr(training._Run, "__init__", set_up)
    monkeypatch.setattr(training._Run, "restore", restore)
    X, y = _data()
    settings = dict(batch_size=50, progress=False, seed=0, early_stopping=5, monitor="loss", checkpoint=path)
    crashed = {"epochs": 4}
    armed = [True]

    def crash(schedule_epoch):  # the first run stops after epoch 2 of 4
        if schedule_epoch == 3 and armed[0]:
            raise KeyboardInterrupt
        return 0.01

    with pytest.raises(KeyboardInterrupt):
        _net(FailingBackend(0)).fit(X, y, optimizer=Adam(0.01), lr_schedule=crash, **crashed, **settings)
    armed[0] = False
    n_params = _net().n_params
    for k in range(1, 10):  # fail the 1st, 2nd, ... parameter-sized allocation of the resume
        backend = FailingBackend(n_params)
        net, optimizer = _net(backend, seed=3), Adam(0.01)
        before = net.get_weights()
        backend.fail_at, backend.count = k, 0
        try:
            net.fit(X, y, optimizer=optimizer, lr_schedule=crash, resume=True, **crashed, **settings)
        except DeviceMemoryError:
            for a, b in zip(before, net.get_weights()):
                np.testing.assert_array_equal(a, b)
            assert optimizer.steps == 0 and not optimizer.state, f"allocation {k} left a half-applied resume"
            continue
        assert k > 3, "the set-up allocates the best weights, and the resume Adam's step count and moments"
        break
    else:
        pytest.fail("the resume never succeeded")


def test_early_stopping_without_validation_data_warns_unless_the_monitor_is_named():
    from gpubp.errors import GpubpWarning

    X, y = _data()
    with pytest.warns(GpubpWarning, match=r"early_stopping watches the training loss \('loss'\)"):
        _net().fit(X, y, epochs=2, batch_size=50, progress=False, early_stopping=3)
    _net().fit(X, y, epochs=2, batch_size=50, progress=False, early_stopping=3, monitor="loss")  # no warning
    _net().fit(X, y, epochs=2, batch_size=50, progress=False, early_stopping=3, validation_split=0.2)


def test_a_resume_with_progress_says_from_where(tmp_path, capsys, monkeypatch):
    path = tmp_path / "ck.npz"
    interrupted_before(2, lambda: _fit(_net(), Adam(0.01), 3, path), monkeypatch)
    history = _fit(_net(), Adam(0.01), 3, path, resume=True, progress=True)
    err = capsys.readouterr().err
    assert f"resumed from epoch 1 of 3 (checkpoint {str(path)!r})" in err and history.resumed_from == 1


def test_resuming_a_run_that_had_stopped_early_says_nothing_is_left(tmp_path, capsys):
    path = tmp_path / "ck.npz"
    X, y = _data()
    settings = dict(batch_size=50, seed=0, checkpoint=path, early_stopping=1, monitor="loss", min_delta=10.0)
    first = _net().fit(X, y, epochs=5, optimizer=Adam(0.01), progress=False, **settings)
    assert first.stopped_epoch == 2
    again = _net().fit(X, y, epochs=5, optimizer=Adam(0.01), progress=True, resume=True, **settings)
    assert len(again) == 2
    assert "that run had stopped early after epoch 2: nothing left to train" in capsys.readouterr().err


def test_a_new_run_onto_an_existing_checkpoint_warns(tmp_path):
    from gpubp.errors import GpubpWarning

    path = tmp_path / "ck.npz"
    _fit(_net(), Adam(0.01), 1, path)
    with pytest.warns(GpubpWarning, match="exists and will be overwritten .* pass resume=True"):
        _fit(_net(), Adam(0.01), 1, path)
    _fit(_net(), Adam(0.01), 1, path, resume=True)  # continuing it: no warning (a finished run: nothing to do)


def test_progress_lines_go_to_stdout_as_each_epoch_ends(capsys):
    X, y = _data()
    _net().fit(X, y, epochs=2, batch_size=50, optimizer=Adam(0.01), progress="lines")
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["epoch 1/2", "epoch 2/2"] and ", time " in out[0]
