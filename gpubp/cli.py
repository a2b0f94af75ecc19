"""The ``gpubp`` command: ``gpubp info`` and ``gpubp train``."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import __version__, data, optim
from .activations import ACTIVATIONS
from .backends import available_backends, cupy_status, get_backend
from .errors import GpubpError
from .mlp import MLP


def _info(args: argparse.Namespace) -> int:
    usable, reason = cupy_status()
    lines = [
        f"gpubp {__version__}",
        f"python {platform.python_version()} ({platform.machine()}, {platform.system()})",
        f"numpy {np.__version__}",
    ]
    try:
        import cupy

        lines.append(f"cupy {cupy.__version__}")
    except Exception:
        lines.append("cupy not installed")
    lines.append(f"backends available: {', '.join(available_backends())}")
    lines.append(f"cupy backend: {'usable' if usable else 'not usable'}: {reason}")
    if usable:
        backend = get_backend("cupy")
        free, total = backend.memory_info()  # type: ignore[attr-defined]
        lines.append(f"device: {backend.device_name()}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    lines.append(_kernel_line(usable))
    lines.append(f"auto picks: {get_backend('auto').name}")
    print("\n".join(lines))
    return 0


def _kernel_line(compile_them: bool) -> str:
    """Where the CUDA sources are; on a usable GPU, whether every kernel compiles and loads there."""
    from .backends import _kernels
    from .errors import GpubpError

    try:
        directory = _kernels.kernel_dir()
    except GpubpError as error:
        return f"fused kernels: {error}"
    count = sum(len(names) for names in _kernels.KERNELS.values())
    line = f"fused kernels: {len(_kernels.KERNELS)} sources in {directory}, {count} instantiations"
    if compile_them:
        modules = _kernels.CudaModules()
        try:
            for filename, names in _kernels.KERNELS.items():
                for name in names:
                    modules.get(filename, name)
        except GpubpError as error:
            return f"{line}; FAILED to compile on this device: {error}"
        line += "; all compiled and loaded on this device"
    return line


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,64, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return widths


def _train(args: argparse.Namespace) -> int:
    task = "spirals" if args.dataset == "synthetic" else args.dataset
    if task == "regression":
        X, y = data.regression(args.samples, seed=args.seed)
        loss = "mse"
    elif task == "xor":
        X, y = data.xor(args.samples, seed=args.seed)
        loss = "cross_entropy"
    else:
        X, y = data.spirals(args.samples, n_classes=args.classes, seed=args.seed)
        loss = "cross_entropy"
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    n_val = max(1, int(len(X) * args.validation))
    val, train = order[:n_val], order[n_val:]
    outputs = y.shape[1] if y.ndim == 2 else int(y.max()) + 1
    net = MLP([X.shape[1], *args.hidden, outputs], activation=args.activation, loss=loss, backend=args.backend,
              dtype=args.dtype, seed=args.seed)
    optimizer_class = optim.OPTIMIZERS[args.optimizer]
    optimizer = optimizer_class(args.lr, momentum=args.momentum) if args.optimizer == "sgd" else optimizer_class(args.lr)
    print(f"gpubp {__version__}: {net}")
    print(f"backend: {net.backend.name} on {net.backend.device_name()}; data: {task}, "
          f"{len(train)} training and {len(val)} validation samples; optimizer: {optimizer}")
    started = time.perf_counter()
    history = net.fit(X[train], y[train], epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                      validation_data=(X[val], y[val]), progress=not args.no_progress, seed=args.seed)
    wall = time.perf_counter() - started
    final = history.records[-1]
    summary = {key: value for key, value in final.items() if key not in ("time",)}
    summary["epochs"] = len(history)
    summary["wall_s"] = wall
    summary["train_samples_per_s"] = len(train) * len(history) / sum(history["time"])
    print("final: " + ", ".join(f"{key} {value:.4g}" for key, value in summary.items()))
    if args.save:
        net.save(args.save)
        print(f"saved to {args.save}")
    if args.history:
        with open(args.history, "w", encoding="utf-8") as handle:
            json.dump(history.as_dict(), handle, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpubp", description="Explicit backpropagation on NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what gpubp decides (backend choice)")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, backends, and why CuPy is or is not usable")
    info.set_defaults(run=_info)

    train = commands.add_parser("train", help="train an MLP on a built-in synthetic task")
    train.add_argument("--dataset", choices=["synthetic", "spirals", "xor", "regression"], default="synthetic",
                       help="built-in task ('synthetic' is spirals); default: %(default)s")
    train.add_argument("--samples", type=int, default=20000, help="samples generated; default: %(default)s")
    train.add_argument("--classes", type=int, default=3, help="spiral arms (classes); default: %(default)s")
    train.add_argument("--validation", type=float, default=0.1, help="validation fraction; default: %(default)s")
    train.add_argument("--hidden", type=_parse_widths, default=[64, 64], help="hidden widths; default: 64,64")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu", help="default: %(default)s")
    train.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS), default="adam", help="default: %(default)s")
    train.add_argument("--lr", type=float, default=1e-2, help="learning rate; default: %(default)s")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum; default: %(default)s")
    train.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    train.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    train.add_argument("--backend", default="auto", help="auto, numpy/cpu or cupy/gpu; default: %(default)s")
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: %(default)s")
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    train.add_argument("--save", metavar="PATH", help="save the trained network (.npz)")
    train.add_argument("--history", metavar="PATH", help="write the per-epoch history as JSON")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args))
    except GpubpError as error:
        print(f"gpubp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
