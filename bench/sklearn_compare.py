"""gpubp.sklearn.MLPClassifier against sklearn.neural_network.MLPClassifier: fit time and test accuracy.

    python bench/sklearn_compare.py [--backend auto|numpy|cupy] [--seeds 3] [--json PATH]
                                    [--datasets fashion-mnist,digits] [--data-dir DIR]

The same architecture, solver (adam), batch size, learning rate, epochs and input dtype
for both; ``tol=0`` and ``n_iter_no_change`` above the epochs, so both run every epoch
(the "maximum iterations" warnings are expected and silenced). For each dataset and dtype
the two are fitted alternately, once per seed, and the table gives the median fit time, the
mean test accuracy over the seeds, and the ratio of the fit times. Fashion-MNIST: 60k
training images scaled to [0, 1], 10k test; skipped with a reason when the IDX files are
absent. digits: scikit-learn's 1,797 8×8 images, standardised, 75/25 split (random_state 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # see step_vs_torch.py

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import gpubp  # noqa: E402
from gpubp.benchmark import machine_info  # noqa: E402
from gpubp.datasets import load_fashion_mnist  # noqa: E402
from gpubp.errors import GpubpError  # noqa: E402
from gpubp.sklearn import MLPClassifier as GpubpMLP  # noqa: E402

SETTINGS = {
    "fashion-mnist": {"hidden_layer_sizes": (256, 128), "batch_size": 128, "max_iter": 3},
    "digits": {"hidden_layer_sizes": (256, 128), "batch_size": 64, "max_iter": 30},
}
"""Per dataset: the same settings for both estimators (adam, learning_rate_init 1e-3, alpha 1e-4)."""


def load(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if name == "fashion-mnist":
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)  # float32 in [0, 1]
        return x_train, x_test, y_train, y_test
    X, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(X, y, random_state=0)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def fit_once(estimator: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray) -> tuple[float, float]:
    """(seconds of fit, test accuracy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        estimator.fit(x_train, y_train)
        seconds = time.perf_counter() - started
    return seconds, float(estimator.score(x_test, y_test))


def compare(name: str, dtype: str, data: tuple, seeds: int, backend: str, epochs: int | None) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = (data[0].astype(dtype), data[1].astype(dtype), data[2], data[3])
    settings = dict(SETTINGS[name], **({"max_iter": epochs} if epochs else {}))
    common = dict(settings, solver="adam", learning_rate_init=1e-3, alpha=1e-4, tol=0.0,
                  n_iter_no_change=10_000)
    results: dict[str, dict[str, list[float]]] = {"sklearn": {"fit_s": [], "accuracy": []},
                                                  "gpubp": {"fit_s": [], "accuracy": []}}
    for seed in range(seeds):
        for which in ("sklearn", "gpubp"):  # alternately, so a slower spell of the machine hits both
            estimator = (SklearnMLP(random_state=seed, **common) if which == "sklearn"
                         else GpubpMLP(random_state=seed, backend=backend, **common))
            seconds, accuracy = fit_once(estimator, x_train, y_train, x_test, y_test)
            results[which]["fit_s"].append(seconds)
            results[which]["accuracy"].append(accuracy)
    row: dict[str, Any] = {"dataset": name, "dtype": dtype, "n_train": len(x_train), **settings,
                           "hidden_layer_sizes": list(settings["hidden_layer_sizes"])}
    for which, values in results.items():
        row[f"{which}_fit_s"] = statistics.median(values["fit_s"])
        row[f"{which}_accuracy"] = statistics.fmean(values["accuracy"])
        row[f"{which}_runs"] = values
    row["speedup"] = row["sklearn_fit_s"] / row["gpubp_fit_s"]
    row["accuracy_difference"] = row["gpubp_accuracy"] - row["sklearn_accuracy"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", help="gpubp's backend: auto, numpy or cupy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="fashion-mnist,digits")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every dataset (default: each one's)")
    parser.add_argument("--data-dir", default=None, help="the Fashion-MNIST IDX files (default: the Debian path)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and machine info as JSON")
    args = parser.parse_args()
    backend = gpubp.get_backend(args.backend)
    info = machine_info([backend])
    print(f"# {time.strftime('%Y-%m-%d')}  {info['cpu']}, {info['cores']} cores; gpubp on {backend.device_name()}; "
          f"numpy {info['numpy']}, scikit-learn {__import__('sklearn').__version__}; {args.seeds} seeds")
    header = (f"{'dataset':<14} {'dtype':<8} {'hidden':<11} {'batch':>5} {'epochs':>6} {'sklearn s':>9} "
              f"{'gpubp s':>8} {'speedup':>7} {'sklearn acc':>11} {'gpubp acc':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.datasets.split(","):
        try:
            data = load(name, args.data_dir)
        except GpubpError as error:
            print(f"{name}: skipped: {error}")
            continue
        for dtype in args.dtypes.split(","):
            row = compare(name, dtype, data, args.seeds, backend.name, args.epochs)
            rows.append(row)
            print(f"{name:<14} {dtype:<8} {str(tuple(row['hidden_layer_sizes'])):<11} {row['batch_size']:>5} "
                  f"{row['max_iter']:>6} {row['sklearn_fit_s']:9.2f} {row['gpubp_fit_s']:8.2f} {row['speedup']:7.2f} "
                  f"{row['sklearn_accuracy']:11.4f} {row['gpubp_accuracy']:9.4f}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": info, "backend": backend.name, "device": backend.device_name(),
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
