"""The gpubp command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import interrupted_before

import gpubp
from gpubp.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"gpubp {gpubp.__version__}" in out
    assert f"numpy {np.__version__}" in out
    assert "backends available: numpy" in out
    assert gpubp.cupy_status()[1] in out
    from gpubp.backends._kernels import KERNELS

    count = sum(len(names) for names in KERNELS.values())
    assert f"fused kernels: {len(KERNELS)} sources in" in out and f"{count} instantiations" in out


def test_train_synthetic_end_to_end(tmp_path, capsys):
    model, history = tmp_path / "net.npz", tmp_path / "history.json"
    code = main(["train", "--samples", "3000", "--epochs", "15", "--backend", "numpy", "--no-progress",
                 "--save", str(model), "--history", str(history)])
    assert code == 0
    out = capsys.readouterr().out
    assert "final: loss" in out and "val_accuracy" in out and "train_samples_per_s" in out
    final = next(line for line in out.splitlines() if line.startswith("final: "))
    final_accuracy = float(final.split("val_accuracy ")[1].split(",")[0])
    assert out.count("\nepoch ") == 15  # one line per epoch without the progress bar
    assert final_accuracy > 0.95
    records = json.loads(history.read_text())
    assert records["epoch"] == list(range(1, 16))
    assert gpubp.load(model, backend="numpy").sizes == (2, 64, 64, 3)


def test_train_shows_progress_bar(capsys):
    assert main(["train", "--samples", "500", "--epochs", "1", "--backend", "cpu", "--dataset", "xor"]) == 0
    assert "epoch 1/1" in capsys.readouterr().err


def test_train_regression(capsys):
    assert main(["train", "--dataset", "regression", "--samples", "500", "--epochs", "2", "--no-progress",
                 "--backend", "numpy", "--optimizer", "sgd", "--lr", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "loss='mse'" in out and "accuracy" not in out


def test_user_errors_exit_2_with_message(capsys):
    assert main(["train", "--backend", "tpu", "--epochs", "1"]) == 2
    assert "gpubp: error: unknown backend 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "64,x"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "gpubp.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and gpubp.__version__ in result.stdout


def test_train_fashion_mnist_from_a_data_dir(tmp_path, capsys):
    """End to end on a small set of IDX files written here: test accuracy, history JSON, plot."""
    from test_datasets import _fake_fashion_mnist

    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (gpubp[plot], in gpubp[test])")
    _fake_fashion_mnist(tmp_path / "fm", n_train=200, n_test=50)
    history, plot = tmp_path / "h.json", tmp_path / "curves.png"
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "fm"), "--epochs", "3",
                 "--hidden", "16", "--backend", "numpy", "--no-progress", "--lr-schedule", "cosine",
                 "--early-stopping", "5", "--history", str(history), "--plot", str(plot)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST from" in out and "180 training, 20 validation, 50 test samples" in out
    final = next(line for line in out.splitlines() if line.startswith("final: "))
    assert "test_accuracy" in final and "wall_s" in final and "train_samples_per_s" in final
    records = json.loads(history.read_text())
    assert len(records["lr"]) == 3 and records["lr"][0] > records["lr"][2]
    assert "test_accuracy" in records["summary"]
    assert plot.read_bytes()[:4] == b"\x89PNG" and f"learning curves written to {plot}" in out


def test_train_fashion_mnist_without_data_explains(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "apt-get install dataset-fashion-mnist" in err


@pytest.mark.parametrize("argv,message", [
    (["--validation", "1.5"], r"--validation must be in \[0, 1\)"),
    (["--validation", "0", "--early-stopping", "2"], "--early-stopping watches the validation loss"),
    (["--plot", "curves.pdf"], "--plot must name a .png file"),
])
def test_train_option_errors(argv, message, capsys):
    assert main(["train", "--epochs", "1", "--backend", "numpy", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_train_checkpoint_and_resume(tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "run.ckpt.npz"
    common = ["train", "--samples", "600", "--backend", "numpy", "--no-progress", "--checkpoint", str(checkpoint)]
    assert interrupted_before(3, lambda: main(common + ["--epochs", "4"]), monkeypatch) == 130  # dies in epoch 3
    captured = capsys.readouterr()
    assert "epoch 1/4: " in captured.out and "epoch 2/4: " in captured.out  # each epoch's line as it ended
    assert (f"gpubp: interrupted; the checkpoint {checkpoint} holds epoch 2: run the same command with --resume "
            "to continue") in captured.err
    assert main(common + ["--epochs", "4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nepoch 3/4: ") == 1 and "epochs 4" in out
    assert main(["train", "--epochs", "4", "--samples", "600", "--backend", "numpy", "--no-progress"]) == 0
    straight = capsys.readouterr().out
    assert straight.split("epoch 4/4: ")[1].split(", time")[0] == out.split("epoch 4/4: ")[1].split(", time")[0]
    assert main(["train", "--epochs", "1", "--resume"]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("option,name,message", [
    ("--save", "missing/model.npz", r"--save 'DIR/missing/model.npz': directory 'DIR/missing' does not exist"),
    ("--history", "missing/h.json", "directory 'DIR/missing' does not exist"),
    ("--plot", "missing/c.png", "directory 'DIR/missing' does not exist"),
    ("--checkpoint", "missing/ck.npz", "directory 'DIR/missing' does not exist"),
    ("--save", "model.txt", "--save must name a .npz file"),
    ("--history", "h.csv", "--history must name a .json file"),
    ("--plot", "c.pdf", "--plot must name a .png file"),
    ("--save", "adir.npz", "--save 'DIR/adir.npz' is a directory"),
    ("--history", "readonly.json", "--history 'DIR/readonly.json' is not writable"),
])
def test_every_output_path_is_checked_before_training(tmp_path, capsys, option, name, message):
    (tmp_path / "adir.npz").mkdir()
    (tmp_path / "readonly.json").symlink_to(tmp_path / "missing" / "target.json")  # dangling: cannot be written
    code = main(["train", "--epochs", "1", "--samples", "200", "--backend", "numpy", "--no-progress",
                 option, str(tmp_path / name)])
    captured = capsys.readouterr()
    assert code == 2 and re.search(message.replace("DIR", re.escape(str(tmp_path))), captured.err)
    assert captured.out == "" and not (tmp_path / "missing").exists()  # nothing ran, nothing was created


@pytest.mark.parametrize("argv,message", [
    (["--hidden", ""], "expected at least one layer width"),
    (["--samples", "5"], r"validation_split=0.1 of 5 samples leaves 0 for validation"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--classes", "1"], "--classes must be >= 2"),
    (["--lr", "-1"], "argument --lr: learning rates must be finite numbers > 0"),
    (["--early-stopping", "-1"], r"--early-stopping must be >= 0 \(0: off\), got -1"),
    (["--optimizer", "sgd", "--momentum", "nan"], r"--momentum must be in \[0, 1\), got nan"),
    (["--momentum", "0.5"], "--momentum is SGD's; --optimizer adam has none"),
    (["--hidden", "32,,32"], "expected comma-separated integers"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--lr", "1e-3,x"], "expected a learning rate or a list"),
    (["--members", "5", "--lr", "1e-3,1e-2"], "--members 5 cannot share the 2 rates of --lr evenly"),
    (["--members", "0"], "--members must be >= 1"),
    (["--on-nonfinite", "freeze_member"], "freeze_member is for an ensemble"),
    (["--save-best", "best.npz"], "--save-best saves the best member of an ensemble"),
    (["--members", "2", "--distributed"], "--distributed is for one network"),
])
def test_bad_options_fail_before_anything_is_built(argv, message, capsys):
    try:
        code = main(["train", "--backend", "numpy", "--no-progress", *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2 and re.search(message, captured.err) and captured.out == ""


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["train", "--epochs", "1", "--samples", "200", "--no-progress", "--plot", str(tmp_path / "c.png")]) == 2
    captured = capsys.readouterr()
    assert 'pip install "gpubp[plot]"' in captured.err and captured.out == ""


def test_a_resumed_run_says_so_and_marks_the_earlier_epochs(tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "run.ckpt.npz"
    common = ["train", "--samples", "600", "--backend", "numpy", "--no-progress", "--checkpoint", str(checkpoint),
              "--epochs", "3"]
    assert interrupted_before(3, lambda: main(common), monkeypatch) == 130
    capsys.readouterr()
    assert main([*common, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from epoch 2 of 3 (checkpoint {str(checkpoint)!r})" in out
    assert "epoch 1/3 (before the resume): " in out and "epoch 2/3 (before the resume): " in out
    assert "\nepoch 3/3: " in out and "; 3 epochs" in out


def test_one_epoch_is_singular(capsys):
    assert main(["train", "--epochs", "1", "--samples", "200", "--backend", "numpy", "--no-progress"]) == 0
    assert "; 1 epoch\n" in capsys.readouterr().out


def test_train_members_sweep_prints_a_ranked_table_and_saves(tmp_path, capsys):
    """--members with a --lr list: one ensemble; its members ranked by validation loss; the best saved."""
    argv = ["train", "--samples", "1500", "--epochs", "3", "--backend", "numpy", "--no-progress", "--members", "4",
            "--lr", "1e-3,1e-2", "--save", str(tmp_path / "ensemble.npz"), "--save-best", str(tmp_path / "best.npz"),
            "--history", str(tmp_path / "history.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Ensemble(n_members=4" in out and "learning rates [0.001, 0.01] (2 members each)" in out
    table = out[out.index("members ranked by val_loss"):].splitlines()[1:6]
    assert table[0].split()[:3] == ["rank", "member", "lr"]
    losses = [float(line.split()[8]) for line in table[1:]]
    assert losses == sorted(losses)  # best first
    rates = {line.split()[1]: float(line.split()[2]) for line in table[1:]}
    assert rates == {"0": 1e-3, "1": 1e-3, "2": 1e-2, "3": 1e-2}
    ensemble = gpubp.load(tmp_path / "ensemble.npz", backend="numpy")
    best = gpubp.load(tmp_path / "best.npz", backend="numpy")
    member = int(table[1].split()[1])
    np.testing.assert_array_equal(best.params, ensemble.params[member])
    history = json.loads((tmp_path / "history.json").read_text())
    assert np.array(history["val_loss"]).shape == (3, 4) and history["ranking"][0]["member"] == member


def test_train_members_without_a_list_repeats_the_rate_over_seeds(capsys):
    assert main(["train", "--samples", "600", "--epochs", "1", "--backend", "numpy", "--no-progress",
                 "--members", "3", "--lr", "0.01", "--early-stopping", "1"]) == 0
    out = capsys.readouterr().out
    assert "learning rates [0.01] (3 members each)" in out and "early stopping per member" in out


def test_bench_members_reports_members_times_samples_per_second(tmp_path, capsys):
    assert main(["bench", "--backend", "numpy", "--members", "1,2", "--batches", "16", "--repeats", "1",
                 "--json", str(tmp_path / "members.json"), "--markdown", str(tmp_path / "members.md")]) == 0
    out = capsys.readouterr().out
    assert "members × samples/s" in out
    report = json.loads((tmp_path / "members.json").read_text())
    assert report["schema"] == "gpubp.bench.members"
    assert [(row["sizes"], row["batch"], row["members"]) for row in report["rows"]] == [
        ([64, 64, 64, 10], 16, 1), ([64, 64, 64, 10], 16, 2), ([784, 256, 10], 16, 1), ([784, 256, 10], 16, 2)]
    for row in report["rows"]:
        assert row["member_samples_per_s"] == pytest.approx(row["members"] * 16 / (row["ensemble_ms"] / 1e3))
    assert "| numpy | [784,256,10] | 16 | 2 |" in (tmp_path / "members.md").read_text()
