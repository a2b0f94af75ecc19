"""fit's validation split, learning-rate schedules and early stopping; the schedules; the learning-curve plot."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import gpubp
from gpubp import schedules
from gpubp.errors import GpubpTypeError, GpubpValueError, OptionalDependencyError
from gpubp.optim import SGD, Adam


def _net(backend="numpy", **kwargs):
    return gpubp.MLP([2, 16, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0, **kwargs)


@pytest.fixture
def spirals():
    return gpubp.data.spirals(300, n_classes=3, seed=0)


# --- validation split --------------------------------------------------------------------------------
def test_validation_split_holds_out_a_seeded_subset(spirals):
    X, y = spirals
    history = _net().fit(X, y, epochs=2, batch_size=32, validation_split=0.2, progress=False, seed=3)
    assert "val_loss" in history.keys() and "val_accuracy" in history.keys()
    assert history["samples_per_s"][0] == pytest.approx(240 / history["time"][0])  # 300 − 60 trained on
    again = _net().fit(X, y, epochs=2, batch_size=32, validation_split=0.2, progress=False, seed=3)
    assert history["val_loss"] == again["val_loss"]  # same seed, same split, same run


def test_validation_split_equals_passing_the_same_subset(spirals):
    X, y = spirals
    held_out = np.random.default_rng(5).permutation(300)
    val, train = held_out[:30], np.sort(held_out[30:])
    a = _net().fit(X, y, epochs=1, validation_split=0.1, progress=False, seed=5, shuffle=False)
    b = _net().fit(X[train], y[train], epochs=1, validation_data=(X[val], y[val]), progress=False, seed=5,
                   shuffle=False)
    assert a["val_loss"] == b["val_loss"] and a["loss"] == b["loss"]


@pytest.mark.parametrize("split,error,message", [
    (1.0, GpubpValueError, r"validation_split must be in \[0, 1\)"),
    (-0.1, GpubpValueError, r"validation_split must be in \[0, 1\)"),
    ("0.1", GpubpTypeError, "validation_split must be a number"),
    (0.001, GpubpValueError, "leaves 0 for validation"),
])
def test_bad_validation_split(spirals, split, error, message):
    net = _net()
    before = net.get_weights()
    with pytest.raises(error, match=message):
        net.fit(*spirals, epochs=1, validation_split=split, progress=False)
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_validation_split_and_data_together_is_an_error(spirals):
    X, y = spirals
    with pytest.raises(GpubpValueError, match="validation_data or validation_split, not both"):
        _net().fit(X, y, validation_data=(X, y), validation_split=0.1, progress=False)


# --- schedules ------------------------------------------------------------------------------------------
def test_step_and_cosine_formulas():
    step = schedules.StepLR(step_size=3, gamma=0.5)
    assert [step(e, 0.8, 10) for e in range(1, 8)] == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2]
    cosine = schedules.CosineLR(min_lr=0.01)
    values = [cosine(e, 0.1, 4) for e in range(1, 5)]
    expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert values == pytest.approx(expected) and values[0] == pytest.approx(0.1)
    warm = schedules.CosineLR(warmup=2)
    assert [warm(e, 0.3, 6) for e in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_cosine_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for the cosine schedule")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=7, eta_min=0.02)
    ours = schedules.CosineLR(min_lr=0.02)
    for epoch in range(1, 8):
        assert ours(epoch, 0.2, 7) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_fit_applies_the_schedule_and_restores_the_base_rate(spirals):
    optimizer = SGD(0.1)
    history = _net().fit(*spirals, epochs=6, optimizer=optimizer, lr_schedule="step", progress=False)
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert optimizer.lr == 0.1
    history = _net().fit(*spirals, epochs=3, optimizer=optimizer, lr_schedule=lambda epoch: 0.05 * epoch,
                         progress=False)
    assert history["lr"] == pytest.approx([0.05, 0.1, 0.15])
    history = _net().fit(*spirals, epochs=4, optimizer=optimizer, lr_schedule="cosine", progress=False)
    assert history["lr"][0] == 0.1 and history["lr"] == sorted(history["lr"], reverse=True)


def test_the_schedule_really_sets_the_optimizer_rate(spirals):
    """A schedule that halves the rate gives the same weights as a constant half rate."""
    a, b = _net(), _net()
    a.fit(*spirals, epochs=2, optimizer=SGD(0.2), lr_schedule=lambda epoch: 0.1, progress=False, seed=1)
    b.fit(*spirals, epochs=2, optimizer=SGD(0.1), progress=False, seed=1)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("schedule,error,message", [
    ("linear", GpubpValueError, "unknown lr_schedule 'linear'"),
    (3, GpubpTypeError, "lr_schedule must be a name"),
    (lambda epoch: float("nan"), GpubpValueError, "lr_schedule returned nan for epoch 1"),
    (lambda epoch: -1.0, GpubpValueError, "returned -1.0 for epoch 1"),
    (lambda epoch: "fast", GpubpTypeError, "returned 'fast' for epoch 1; expected a number"),
])
def test_bad_schedules(spirals, schedule, error, message):
    optimizer = Adam(0.01)
    with pytest.raises(error, match=message):
        _net().fit(*spirals, epochs=2, optimizer=optimizer, lr_schedule=schedule, progress=False)
    assert optimizer.lr == 0.01


def test_schedule_constructor_errors():
    with pytest.raises(GpubpValueError, match="step_size"):
        schedules.StepLR(0)
    with pytest.raises(GpubpValueError, match="gamma"):
        schedules.StepLR(2, gamma=-1)
    with pytest.raises(GpubpValueError, match="warmup must be an integer >= 0"):
        schedules.CosineLR(warmup=-1)


# --- early stopping ------------------------------------------------------------------------------------
def test_early_stopping_stops_and_restores_the_best_weights(spirals):
    """A learning rate that explodes after epoch 2 makes validation worse: training stops after
    `patience` bad epochs and the weights are those after epoch 2, the best."""
    X, y = spirals
    rates = lambda epoch: 0.05 if epoch <= 2 else 40.0  # noqa: E731
    net = _net()
    history = net.fit(X, y, epochs=20, batch_size=32, optimizer=SGD(0.05), validation_data=(X, y),
                      lr_schedule=rates, early_stopping=3, progress=False, seed=2)
    assert history.best_epoch == 2 and history.stopped_epoch == 5 and len(history) == 5
    assert history.monitor == "val_loss"
    reference = _net()
    reference.fit(X, y, epochs=2, batch_size=32, optimizer=SGD(0.05), validation_data=(X, y),
                  progress=False, seed=2)
    for a, b in zip(net.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert net.evaluate(X, y)["loss"] == pytest.approx(history["val_loss"][1])


def test_without_restore_best_the_last_weights_stay(spirals):
    X, y = spirals
    net = _net()
    history = net.fit(X, y, epochs=20, batch_size=32, optimizer=SGD(0.05), validation_data=(X, y),
                      lr_schedule=lambda e: 0.05 if e <= 2 else 40.0, early_stopping=2, restore_best=False,
                      progress=False, seed=2)
    assert history.stopped_epoch == 4
    assert net.evaluate(X, y)["loss"] == pytest.approx(history["val_loss"][-1])


def test_early_stopping_runs_all_epochs_while_improving(spirals):
    history = _net().fit(*spirals, epochs=5, batch_size=32, optimizer=SGD(0.05), early_stopping=2, monitor="loss",
                         progress=False, seed=0)
    assert history["loss"] == sorted(history["loss"], reverse=True)  # improving every epoch
    assert len(history) == 5 and history.stopped_epoch is None and history.best_epoch == 5
    assert history.monitor == "loss" and history.as_dict()["best_epoch"] == 5


def test_accuracy_monitors_count_higher_as_better(spirals):
    history = _net().fit(*spirals, epochs=8, optimizer=Adam(0.01), validation_split=0.2, monitor="val_accuracy",
                         progress=False, seed=0)
    accuracies = history["val_accuracy"]
    assert history.best_epoch == 1 + int(np.argmax(accuracies))  # the first epoch reaching the maximum


@pytest.mark.parametrize("kwargs,message", [
    (dict(early_stopping=0), "early_stopping"),
    (dict(early_stopping=2, monitor="val_loss"), r"monitor must be one of \['loss', 'accuracy'\]"),
    (dict(monitor="accuracy", validation_split=0.1, early_stopping=1, min_delta=-1), "min_delta"),
])
def test_bad_early_stopping_arguments(spirals, kwargs, message):
    with pytest.raises(GpubpValueError, match=message):
        _net().fit(*spirals, epochs=2, progress=False, **kwargs)


# --- the plot --------------------------------------------------------------------------------------------
def test_plot_history_writes_a_png(spirals, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (gpubp[plot])")
    from gpubp.plot import plot_history

    history = _net().fit(*spirals, epochs=3, validation_split=0.2, progress=False)
    path = plot_history(history, tmp_path / "curves.png", title="spirals")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(GpubpValueError, match="must end in .png"):
        plot_history(history, tmp_path / "curves.pdf")
    with pytest.raises(GpubpValueError, match="non-empty gpubp History"):
        plot_history(gpubp.History(), tmp_path / "empty.png")


def test_plot_without_matplotlib_says_what_to_install(spirals, tmp_path, monkeypatch):
    from gpubp.plot import plot_history

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    history = _net().fit(*spirals, epochs=1, progress=False)
    with pytest.raises(OptionalDependencyError,
                       match=r'pip install "gpubp\[plot\]" \(or "\.\[plot\]" in a source checkout\)'):
        plot_history(history, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_history_into_a_missing_directory_creates_nothing(spirals, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (gpubp[plot])")
    from gpubp.errors import FileWriteError
    from gpubp.plot import plot_history

    history = _net().fit(*spirals, epochs=1, progress=False)
    with pytest.raises(FileWriteError, match="directory .*missing' does not exist"):
        plot_history(history, tmp_path / "missing" / "curves.png")
    assert not (tmp_path / "missing").exists()
