"""Built-in synthetic datasets (no downloads): two spirals, XOR, and a smooth regression.

Each returns ``(X, y)`` as NumPy arrays: ``X`` float32 ``(n, features)``;
``y`` int64 class labels for classification, float32 ``(n, outputs)`` for regression.
"""

from __future__ import annotations

import numpy as np

from . import _validate as check


def spirals(n_samples: int = 2000, n_classes: int = 2, noise: float = 0.1, turns: float = 1.5,
            seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spirals in 2-D, one arm per class: not linearly separable."""
    n_samples = check.positive_int("n_samples", n_samples)
    n_classes = check.positive_int("n_classes", n_classes)
    noise = check.positive_float("noise", noise, allow_zero=True)
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % n_classes
    radius = rng.uniform(0.05, 1.0, n_samples)
    angle = radius * turns * 2 * np.pi + labels * (2 * np.pi / n_classes)
    X = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    X += rng.normal(0.0, noise * 0.1, X.shape)
    return X.astype(np.float32), labels.astype(np.int64)


def xor(n_samples: int = 400, noise: float = 0.1, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around the four corners of the unit square, labelled by XOR of the corner's bits."""
    n_samples = check.positive_int("n_samples", n_samples)
    noise = check.positive_float("noise", noise, allow_zero=True)
    rng = np.random.default_rng(seed)
    bits = np.arange(n_samples)[:, None] >> np.array([0, 1]) & 1
    labels = bits[:, 0] ^ bits[:, 1]
    X = bits + rng.normal(0.0, noise, bits.shape)
    return X.astype(np.float32), labels.astype(np.int64)


def regression(n_samples: int = 1000, n_features: int = 4, n_outputs: int = 1, noise: float = 0.01,
               seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(X·u) + ½·(X·v)² per output, plus Gaussian noise: smooth and nonlinear."""
    n_samples = check.positive_int("n_samples", n_samples)
    n_features = check.positive_int("n_features", n_features)
    n_outputs = check.positive_int("n_outputs", n_outputs)
    noise = check.positive_float("noise", noise, allow_zero=True)
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (n_samples, n_features))
    u = rng.normal(0.0, 1.0, (n_features, n_outputs))
    v = rng.normal(0.0, 0.5, (n_features, n_outputs))
    y = np.sin(X @ u) + 0.5 * (X @ v) ** 2 + rng.normal(0.0, noise, (n_samples, n_outputs))
    return X.astype(np.float32), y.astype(np.float32)


DATASETS = {"spirals": spirals, "xor": xor, "regression": regression}
