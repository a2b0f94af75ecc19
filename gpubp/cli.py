"""The ``gpubp`` command: ``gpubp info``, ``train``, ``bench``, ``selftest`` and ``export``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import benchmark, data, datasets, distributed, inputs, onnx, optim, selftest, sweep
from ._version import __version__
from .activations import ACTIVATIONS
from .backends import _kernels, available_backends, cupy_status, get_backend
from .benchmark import members
from .ensemble import Ensemble
from .errors import GpubpError, GpubpValueError, OptionalDependencyError
from .history import EnsembleHistory, History
from .io import load
from .mlp import MLP
from .plot import plot_history, plot_members
from .serialization import check_output_path, read_metadata


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
    lines += extras_lines()
    lines += [f"  {name}: {version}" for name, version in distributed.library_versions().items()
              if name != "mpi4py"]
    print("\n".join(lines))
    return 0


EXTRAS = {
    "cuda": (("cupy-cuda13x", "cupy-cuda12x", "cupy"), 'pip install "gpubp[cuda12]" or "gpubp[cuda13]"'),
    "plot": (("matplotlib",), 'pip install "gpubp[plot]"'),
    "mpi": (("mpi4py", "mpich"), 'pip install "gpubp[mpi]"'),
    "sklearn": (("scikit-learn",), 'pip install "gpubp[sklearn]"'),
    "onnx": (("onnx", "onnxruntime"), 'pip install "gpubp[onnx]"'),
}
"""Optional features: the distributions that provide each (the first of cuda's found is CuPy), and how to get it."""


def extras_lines() -> list[str]:
    """One line per optional extra: the installed distributions with their versions, or "not installed"
    (read from the installed packages' metadata; nothing is imported)."""
    lines = ["extras:"]
    for extra, (distributions, hint) in EXTRAS.items():
        found = []
        for name in distributions:
            try:
                found.append(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                continue
            if extra == "cuda":  # one CuPy is enough
                break
        installed = ", ".join(found) if found else f"not installed ({hint})"
        lines.append(f"  {extra}: {installed}")
    return lines


def _kernel_line(compile_them: bool) -> str:
    """Where the CUDA sources are; on a usable GPU, whether every kernel compiles and loads there."""
    try:
        directory = _kernels.kernel_dir()
    except GpubpError as error:
        return f"fused kernels: {error}"
    count = sum(len(names) for names in _kernels.KERNELS.values())
    line = f"fused kernels: {len(_kernels.KERNELS)} sources in {directory}, {count} instantiations"
    if compile_them:
        modules = _kernels.CudaModules()
        device = get_backend("cupy").device.id  # type: ignore[attr-defined]
        try:
            for filename, names in _kernels.KERNELS.items():
                for name in names:
                    modules.get(filename, name, device)
        except GpubpError as error:
            return f"{line}; FAILED to compile on this device: {error}"
        line += "; all compiled and loaded on this device"
    return line


def _positive_ints(text: str, what: str, example: str) -> list[int]:
    """Comma-separated integers, at least one, each >= 1; the errors name ``what`` and an ``example``."""
    parts = text.split(",") if text.strip() else []
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like {example}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {what}, like {example}, got {text!r}")
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"every {what} must be >= 1, got {text!r}")
    return values


def _parse_widths(text: str) -> list[int]:
    """``--hidden``, ``--widths``, ``--depths``, ``--batches``: layer widths and the like."""
    return _positive_ints(text, "layer width", "64 or 64,64")


def _parse_counts(text: str) -> list[int]:
    """``--members``: numbers of members."""
    return _positive_ints(text, "number of members", "1,8,64")


def _parse_rates(text: str) -> list[float]:
    """``--lr``: one learning rate, or a comma-separated list of them (a sweep: one per group of members)."""
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a learning rate or a list like 1e-3,3e-3, got {text!r}") from None
    if not all(0 < rate < float("inf") for rate in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be finite numbers > 0, got {text!r}")
    return rates


def _load_task(args: argparse.Namespace) -> dict:
    """The data of a run: the training (and, for real data, test) set, the loss, defaults."""
    test = None
    if args.dataset == "fashion-mnist":
        (X, y), test = datasets.load_fashion_mnist(args.data_dir)
        task = {"loss": "cross_entropy", "hidden": [256, 128], "lr": 1e-3,
                "name": f"Fashion-MNIST from {datasets.fashion_mnist_dir(args.data_dir)}"}
    else:
        name = "spirals" if args.dataset == "synthetic" else args.dataset
        if name == "regression":
            X, y = data.regression(args.samples, seed=args.seed)
        elif name == "xor":
            X, y = data.xor(args.samples, seed=args.seed)
        else:
            X, y = data.spirals(args.samples, n_classes=args.classes, seed=args.seed)
        task = {"loss": "mse" if name == "regression" else "cross_entropy", "hidden": [64, 64], "lr": 1e-2,
                "name": name}
    task.update(train=(X, y), test=test, outputs=y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    return task


def _optimizer(args: argparse.Namespace, lr: float | list[float]) -> optim.Optimizer:
    if args.optimizer == "sgd":
        momentum = 0.9 if args.momentum is None else args.momentum
        return optim.SGD(lr, momentum=momentum, weight_decay=args.weight_decay or 0.0)
    if args.optimizer == "adamw":
        return optim.AdamW(lr, weight_decay=args.weight_decay if args.weight_decay is not None else 1e-2)
    return optim.Adam(lr, weight_decay=args.weight_decay or 0.0)


def check_output(option: str, path: str | None, suffix: str) -> None:
    """Refuse, before anything runs, an output file that could not be written at the end of a run."""
    if not path:
        return
    if Path(path).suffix.lower() != suffix:
        raise GpubpValueError(f"{option} must name a {suffix} file, got {path!r}")
    check_output_path(path, option)


def _needs_matplotlib(option: str) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise OptionalDependencyError(f"{option} needs matplotlib, which is not installed: "
                                      f"pip install \"gpubp[plot]\" (or \".[plot]\" in a source checkout)")


def _check_train_options(args: argparse.Namespace) -> None:
    """Every option of ``gpubp train``, checked before data is loaded or a network built."""
    for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise GpubpValueError(f"{option} must be >= 1, got {value}")
    if args.dataset != "fashion-mnist" and args.samples < 1:
        raise GpubpValueError(f"--samples must be >= 1, got {args.samples}")
    if args.early_stopping < 0:
        raise GpubpValueError(f"--early-stopping must be >= 0 (0: off), got {args.early_stopping}")
    if args.comm != "auto" and not args.distributed:
        raise GpubpValueError(f"--comm {args.comm} needs --distributed (it says how the ranks communicate)")
    ranks = distributed.launched_size()
    if ranks > 1 and not args.distributed:
        logging.getLogger("gpubp").warning(
            "gpubp: started as one of %d ranks by a launcher but without --distributed: every rank trains alone "
            "and writes the same output files; add --distributed to train one network over all of them", ranks)
    if args.momentum is not None and args.optimizer != "sgd":
        raise GpubpValueError(f"--momentum is SGD's; --optimizer {args.optimizer} has none (use --optimizer sgd)")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise GpubpValueError(f"--momentum must be in [0, 1), got {args.momentum}")
    get_backend(args.backend)  # an unknown or unusable backend, before anything is loaded
    if args.dataset in ("synthetic", "spirals") and args.classes < 2:
        raise GpubpValueError(f"--classes must be >= 2 (spiral arms, one class each), got {args.classes}")
    if not 0 <= args.validation < 1:
        raise GpubpValueError(f"--validation must be in [0, 1), got {args.validation}")
    if args.validation and args.dataset != "fashion-mnist":
        inputs.validation_size(args.samples, args.validation)
    if args.early_stopping and args.validation == 0:
        raise GpubpValueError("--early-stopping watches the validation loss; it needs --validation > 0")
    if args.resume and not args.checkpoint:
        raise GpubpValueError("--resume needs --checkpoint PATH, the file to resume from")
    if args.weight_decay is not None and not (args.weight_decay >= 0 and args.weight_decay < float("inf")):
        raise GpubpValueError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    _check_members(args)
    for option, path, suffix in (("--save", args.save, ".npz"), ("--history", args.history, ".json"),
                                 ("--plot", args.plot, ".png"), ("--checkpoint", args.checkpoint, ".npz"),
                                 ("--save-best", args.save_best, ".npz")):
        check_output(option, path, suffix)
    if args.plot:
        _needs_matplotlib("--plot")


def members_of(args: argparse.Namespace) -> int:
    """How many networks ``gpubp train`` trains: ``--members``, or one per rate of a ``--lr`` list."""
    return args.members if args.members is not None else len(args.lr or [0.0])


def _check_members(args: argparse.Namespace) -> None:
    """The ensemble options: ``--members`` a multiple of the ``--lr`` list, nothing that needs one network."""
    if args.members is not None and args.members < 1:
        raise GpubpValueError(f"--members must be >= 1, got {args.members}")
    members = members_of(args)
    if args.lr is not None and members % len(args.lr):
        raise GpubpValueError(f"--members {members} cannot share the {len(args.lr)} rates of --lr evenly: give a "
                              f"multiple of {len(args.lr)} members")
    if members > 1 and args.distributed:
        raise GpubpValueError("--members trains an ensemble in one process; --distributed is for one network")
    if args.on_nonfinite == "freeze_member" and members == 1:
        raise GpubpValueError("--on-nonfinite freeze_member is for an ensemble (--members > 1, or a --lr list)")
    if args.save_best and members == 1:
        raise GpubpValueError("--save-best saves the best member of an ensemble (--members > 1, or a --lr list); "
                              "with one network use --save")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _train(args: argparse.Namespace) -> int:
    _check_train_options(args)
    try:  # before the network: it picks this rank's GPU
        comm = distributed.init(args.comm) if args.distributed else None
    except GpubpValueError as error:
        raise GpubpValueError(f"--comm {args.comm}: {error}") from None
    if comm is not None and comm.rank != 0:  # rank 0 alone prints and writes files
        with contextlib.redirect_stdout(io.StringIO()):
            return _run_training(args, comm)
    return _run_training(args, comm)


def _run_training(args: argparse.Namespace, comm: distributed.Communicator | None) -> int:
    task = _load_task(args)
    if members_of(args) > 1:
        return _run_ensemble(args, task)
    X, y = task["train"]
    hidden = args.hidden if args.hidden is not None else task["hidden"]
    net = MLP([X.shape[1], *hidden, task["outputs"]], activation=args.activation, loss=task["loss"],
              backend=args.backend, dtype=args.dtype, seed=args.seed, matmul_precision=args.matmul_precision)
    optimizer = _optimizer(args, args.lr[0] if args.lr is not None else task["lr"])
    n_val = inputs.validation_size(len(X), args.validation) if args.validation else 0
    n_test = 0 if task["test"] is None else len(task["test"][0])
    print(f"gpubp {__version__}: {net}" + (f"; data-parallel over {comm.size} ranks ({comm.kind})" if comm else ""))
    print(f"backend: {net.backend.name} on {net.backend.device_name()}; data: {task['name']}: "
          f"{len(X) - n_val} training, {n_val} validation" + (f", {n_test} test" if n_test else "") + " samples")
    print(f"optimizer: {optimizer}; lr schedule: {args.lr_schedule}; batch size {args.batch_size}; "
          f"{_plural(args.epochs, 'epoch')}"
          + (f", early stopping after {_plural(args.early_stopping, 'epoch')} without improvement"
             if args.early_stopping else ""))
    started = time.perf_counter()
    history = net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                      validation_split=args.validation, progress="lines" if args.no_progress else True, seed=args.seed,
                      lr_schedule=args.lr_schedule, early_stopping=args.early_stopping or None,
                      on_nonfinite=args.on_nonfinite, checkpoint=args.checkpoint, resume=args.resume,
                      distributed=comm)
    summary = _summary(args, net, history, task, len(X) - n_val, time.perf_counter() - started)
    if comm is None or comm.rank == 0:
        _write_outputs(args, net, history, summary, f"{task['name'].split(' from ')[0]}: {net.sizes}, "
                       f"{args.activation}, {optimizer}")
    return 0


def _run_ensemble(args: argparse.Namespace, task: dict) -> int:
    """``gpubp train --members K [--lr a,b,…]``: K networks trained together; their table, ranked."""
    X, y = task["train"]
    members = members_of(args)
    hidden = args.hidden if args.hidden is not None else task["hidden"]
    rates = sweep.member_rates(args.lr if args.lr is not None else [task["lr"]], members)
    ensemble = Ensemble([X.shape[1], *hidden, task["outputs"]], members, activation=args.activation,
                        loss=task["loss"], backend=args.backend, dtype=args.dtype, seeds=args.seed,
                        matmul_precision=args.matmul_precision)
    optimizer = _optimizer(args, rates)
    n_val = inputs.validation_size(len(X), args.validation) if args.validation else 0
    print(f"gpubp {__version__}: {ensemble}")
    print(f"backend: {ensemble.backend.name} on {ensemble.backend.device_name()}; data: {task['name']}: "
          f"{len(X) - n_val} training, {n_val} validation samples; every member sees the same batches")
    print(f"optimizer: {type(optimizer).__name__}, learning rates {sorted(set(rates))} "
          f"({members // len(set(rates))} members each); batch size {args.batch_size}; "
          f"{_plural(args.epochs, 'epoch')}"
          + (f", early stopping per member after {_plural(args.early_stopping, 'epoch')}" if args.early_stopping
             else ""))
    started = time.perf_counter()
    history = ensemble.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                           validation_split=args.validation, progress="lines" if args.no_progress else True,
                           seed=args.seed, lr_schedule=args.lr_schedule, early_stopping=args.early_stopping or None,
                           on_nonfinite=args.on_nonfinite, checkpoint=args.checkpoint, resume=args.resume)
    wall = time.perf_counter() - started
    rows = sweep.results(history, rates, ensemble.seeds, restored=bool(args.early_stopping))
    if task["test"] is not None:
        test = ensemble.evaluate(*task["test"])
        for row in rows:
            row.update({f"test_{key}": test[key][row["member"]] for key in ("loss", "accuracy") if key in test})
    key = "val_loss" if args.validation else "loss"
    rows = sweep.ranked(rows, key)
    columns = ["member", "lr", "seed", "epochs", "best_epoch"] + [c for c in (
        "loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy") if c in rows[0]] + ["note"]
    print(f"members ranked by {key} (the metrics of the weights each ended with):")
    print(sweep.table(rows, columns))
    summary: dict[str, Any] = {"members": members, "wall_s": wall,
                               "member_samples_per_s": float(np.nansum(history["samples_per_s"]) / len(history))}
    if task["test"] is not None:
        summary.update({k: v for k, v in test.items() if k.startswith("ensemble_")})
        print("the ensemble's mean prediction on the test set: " + ", ".join(
            f"{k.removeprefix('ensemble_')} {v:.4g}" for k, v in summary.items() if k.startswith("ensemble_")))
    _write_members(args, ensemble, history, rows, summary, rates)
    return 0


def _write_members(args: argparse.Namespace, ensemble: Ensemble, history: EnsembleHistory,
                   rows: list[dict[str, Any]], summary: dict[str, Any], rates: list[float]) -> None:
    if args.save:
        ensemble.save(args.save)
        print(f"ensemble saved to {args.save}")
    if args.save_best:
        best = rows[0]["member"]
        ensemble.member(best).save(args.save_best)
        print(f"best member ({best}, lr {rates[best]:g}) saved to {args.save_best} as a gpubp.MLP")
    if args.history:
        with open(args.history, "w", encoding="utf-8") as handle:
            json.dump({**history.as_dict(), "ranking": rows, "summary": summary}, handle, indent=1, default=float)
        print(f"history written to {args.history}")
    if args.plot:
        labels = [f"lr {rate:g}" for rate in rates]
        print(f"learning curves written to {plot_members(history, args.plot, labels=labels)}")


def _summary(args: argparse.Namespace, net: MLP, history: History, task: dict, n_train: int,
             wall: float) -> dict[str, float]:
    """Print the final line; return the summary (the epochs' lines came from fit as each ended)."""
    hidden = ("time", "val_time", "samples_per_s", "lr")
    summary: dict[str, float] = {k: v for k, v in history.records[-1].items() if k not in hidden}
    summary["epochs"] = len(history)
    if history.stopped_epoch is not None:
        summary["best_epoch"] = history.best_epoch or 0
    if task["test"] is not None:
        for key, value in net.evaluate(*task["test"]).items():
            summary[f"test_{key}"] = value
    summary["train_samples_per_s"] = n_train * len(history) / sum(history["time"])
    summary["wall_s"] = wall
    print("final: " + ", ".join(f"{key} {value:.4g}" for key, value in summary.items()))
    print("(metrics of the last epoch; train_samples_per_s: training samples per second over all "
          "epochs, validation excluded; wall_s: the whole fit)")
    return summary


def _write_outputs(args: argparse.Namespace, net: MLP, history: History, summary: dict[str, float],
                   title: str) -> None:
    if args.save:
        net.save(args.save)
        print(f"saved to {args.save}")
    if args.history:
        with open(args.history, "w", encoding="utf-8") as handle:
            json.dump({**history.as_dict(), "summary": summary}, handle, indent=1)
        print(f"history written to {args.history}")
    if args.plot:
        print(f"learning curves written to {plot_history(history, args.plot, title=title)}")


def _bench(args: argparse.Namespace) -> int:
    for flag, value in (("--repeats", args.repeats), ("--max-step-s", args.max_step_s)):
        if value is not None and value <= 0:
            raise GpubpValueError(f"{flag} must be > 0, got {value}")
    for option, path, suffix in (("--json", args.json, ".json"), ("--markdown", args.markdown, ".md"),
                                 ("--plot", args.plot, ".png")):
        check_output(option, path, suffix)
    if args.plot:
        _needs_matplotlib("--plot")
    names = available_backends() if args.backend == "all" else [args.backend]
    backends = [get_backend(name) for name in names]
    repeats = args.repeats or (3 if args.quick else 7)
    command = "gpubp bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "gpubp bench"
    if args.members is not None:
        return _bench_members(args, backends, repeats, command.strip())
    configs = benchmark.sweep(args.quick, args.widths, args.depths, args.batches)
    report = benchmark.run(backends, configs, dtype=args.dtype, repeats=repeats,
                           max_step_s=args.max_step_s or 2.0, with_torch=not args.no_torch,
                           command=command.strip(), quick=args.quick, log=lambda line: print(line, flush=True),
                           precision=args.matmul_precision)
    print(benchmark.summary(report))
    if args.json:
        benchmark.write_json(report, args.json)
        print(f"JSON written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(benchmark.markdown(report))
        print(f"markdown written to {args.markdown}")
    if args.plot:
        print(f"plot written to {benchmark.plot(report, args.plot)}")
    return 0


def _bench_members(args: argparse.Namespace, backends: list[Any], repeats: int, command: str) -> int:
    """``gpubp bench --members 1,8,64``: ensembles against separate networks (see gpubp.benchmark.members)."""
    if args.plot:
        raise GpubpValueError("--plot draws the sweep's curves; with --members use --json or --markdown")
    networks = members.NETWORKS
    if args.batches:  # the default networks at other batch sizes
        networks = tuple((sizes, batch) for sizes, _ in members.NETWORKS for batch in args.batches)
    report = members.run(backends, args.members, networks, args.dtype, repeats,
                         log=lambda line: print(line, flush=True), command=command)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        print(f"JSON written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(members.markdown(report))
        print(f"markdown written to {args.markdown}")
    return 0


def _export(args: argparse.Namespace) -> int:
    check_output("--onnx", args.onnx, ".onnx")
    onnx.onnx_module()  # the missing extra is said before the model is read
    net = load(args.model, backend="numpy")
    path = net.to_onnx(args.onnx, args.opset)
    print(f"wrote {path}: {list(net.sizes)} {net.dtype.name}, output {net.output_activation}, opset {args.opset}")
    return 0


def _selftest(args: argparse.Namespace) -> int:
    check_output("--json", args.json, ".json")
    backend = get_backend(args.backend)
    print(f"gpubp {__version__} selftest on backend {backend.name!r} ({backend.device_name()})", flush=True)
    checks = selftest.run(backend, quick=args.quick)
    print(selftest.table(checks))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"gpubp": __version__, "backend": backend.name, "device": backend.device_name(),
                       "date": time.strftime("%Y-%m-%d"), "checks": selftest.as_json(checks)}, handle, indent=1)
        print(f"JSON written to {args.json}")
    return 1 if any(check.passed is False for check in checks) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpubp", description="Explicit backpropagation on NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what gpubp decides (backend choice)")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, backends, and why CuPy is or is not usable")
    info.set_defaults(run=_info)

    _add_train(commands)
    _add_bench(commands)
    export = commands.add_parser("export", help="write a saved model (or a checkpoint's network) as ONNX",
                                 description="Convert a model written by MLP.save or gpubp train --save (or the "
                                             "network of a checkpoint) to an ONNX model that computes predict: "
                                             "probabilities for cross_entropy/bce, outputs otherwise.")
    export.add_argument("model", metavar="MODEL.npz", help="the model or checkpoint file")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    export.add_argument("--opset", type=int, default=onnx.DEFAULT_OPSET,
                        help=f"ONNX opset, {onnx.MIN_OPSET} or newer; default: %(default)s")
    export.set_defaults(run=_export)
    check = commands.add_parser(
        "selftest", help="prove that a backend computes what the NumPy reference does, on this machine",
        description="Run every fused operation, 50 training steps and the memory, synchronisation and "
                    "determinism checks on the backend against gpubp's NumPy reference; print a pass/fail "
                    "table; exit code 1 if any check fails.")
    check.add_argument("--backend", default="auto", help="auto, numpy/cpu or cupy/gpu; default: %(default)s")
    check.add_argument("--quick", action="store_true", help="a smaller timing configuration")
    check.add_argument("--json", metavar="PATH", help="also write the checks as JSON")
    check.set_defaults(run=_selftest)
    return parser


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train an MLP on Fashion-MNIST or a built-in synthetic task",
        description="Train an MLP and print one line per epoch and a final summary. Every option is checked "
                    "before anything is loaded or trained; outputs (--save, --history, --plot, --checkpoint) "
                    "must go to existing, writable directories.")
    train.add_argument("--dataset", choices=["fashion-mnist", "synthetic", "spirals", "xor", "regression"],
                       default="synthetic", help="'fashion-mnist' reads the IDX files (see --data-dir); "
                       "'synthetic' is another name for 'spirals'; default: %(default)s")
    train.add_argument("--data-dir", metavar="DIR", help="directory of the Fashion-MNIST files; default: "
                       "$GPUBP_DATA, then /usr/share/datasets/fashion-mnist")
    train.add_argument("--samples", type=int, default=20000,
                       help="samples of a synthetic task (validation included); default: %(default)s")
    train.add_argument("--classes", type=int, default=3, help="spiral arms (classes, >= 2); default: %(default)s")
    train.add_argument("--validation", type=float, default=0.1,
                       help="fraction of the training data held out for validation; default: %(default)s")
    train.add_argument("--hidden", type=_parse_widths, default=None,
                       help="hidden widths; default: 256,128 for fashion-mnist, 64,64 otherwise")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu", help="default: %(default)s")
    train.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS), default="adam", help="default: %(default)s")
    train.add_argument("--lr", type=_parse_rates, default=None,
                       help="learning rate, or a comma-separated list of them for a sweep (an ensemble, one group "
                       "of members per rate); default: 0.001 for fashion-mnist, 0.01 otherwise")
    train.add_argument("--members", type=int, default=None, metavar="K",
                       help="train K networks of the same shape together (an ensemble: one batched step for all; "
                       "member seeds derived from --seed), K a multiple of the --lr list; the members are printed "
                       "ranked by validation loss; default: one per --lr rate")
    train.add_argument("--lr-schedule", choices=["constant", "step", "cosine"], default="constant",
                       help="per-epoch learning rate: constant, step (x0.1 every third of the run), cosine; "
                       "default: %(default)s")
    train.add_argument("--momentum", type=float, default=None, help="SGD's momentum (--optimizer sgd only); "
                       "default: 0.9")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="weight decay (L2 for sgd/adam, decoupled for adamw); default: 0, 0.01 for adamw")
    train.add_argument("--epochs", type=int, default=30, help="default: %(default)s")
    train.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a better validation loss and keep the best "
                       "weights; 0: off (default)")
    train.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    train.add_argument("--backend", default="auto", help="auto, numpy/cpu or cupy/gpu; default: %(default)s")
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: %(default)s")
    train.add_argument("--matmul-precision", choices=["highest", "tf32"], default="highest",
                       help="tf32: float32 GEMMs on TF32 tensor cores (GPU only; faster, ~1e-3 relative error "
                       "per product); default: %(default)s")
    train.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    train.add_argument("--checkpoint", metavar="PATH", help="write a training checkpoint (network, optimizer, "
                       "progress) after every epoch, atomically")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from --checkpoint if it "
                       "exists (with the same options; --epochs is the total)")
    train.add_argument("--on-nonfinite", choices=["raise", "skip_step", "freeze_member"], default="raise",
                       help="NaN/Inf in a step: stop with the step and layer named, skip the step, or (an "
                       "ensemble) freeze the member that diverged and train the others on; default: %(default)s")
    train.add_argument("--save", metavar="PATH", help="save the trained network, or the ensemble (.npz)")
    train.add_argument("--save-best", metavar="PATH",
                       help="with --members: save the best-ranked member as a standalone network (.npz)")
    train.add_argument("--history", metavar="PATH", help="write the per-epoch history and the summary as JSON")
    train.add_argument("--plot", metavar="PATH", help="write the learning curves (every member's, for an "
                       "ensemble) as a PNG (needs matplotlib)")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress bar; one line per epoch on stdout instead, as each ends")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of an MPI launch (mpiexec -n 4 gpubp train --distributed; "
                       "NCCL between GPUs): each batch split between the ranks; rank 0 prints and writes files")
    train.add_argument("--comm", choices=list(distributed.BACKENDS), default="auto",
                       help="with --distributed: NCCL between GPUs (auto, where every rank has a GPU of its own) "
                       "or MPI; default: %(default)s")
    train.set_defaults(run=_train)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser("bench", help="time a training step per backend vs its GEMMs and PyTorch, "
                                "CPU vs GPU")
    bench.add_argument("--backend", choices=["numpy", "cupy", "all"], default="all",
                       help="which backends to time; 'all' is every available one; default: %(default)s")
    bench.add_argument("--quick", action="store_true", help="a small sweep (12 configurations; about 10 s on "
                       "2 CPU cores with PyTorch, 7 s without)")
    bench.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default: %(default)s")
    bench.add_argument("--matmul-precision", choices=["highest", "tf32"], default="highest",
                       help="float32 GEMMs exact or on TF32 tensor cores (GPU), for gpubp, the GEMM floor and "
                       "PyTorch alike; default: %(default)s")
    bench.add_argument("--widths", type=_parse_widths, default=None, help="override the sweep's widths (64,256,…)")
    bench.add_argument("--depths", type=_parse_widths, default=None, help="override the sweep's layer counts")
    bench.add_argument("--batches", type=_parse_widths, default=None, help="override the sweep's batch sizes")
    bench.add_argument("--repeats", type=int, default=None, help="timing rounds per config (median); "
                       "default: 7, 3 with --quick")
    bench.add_argument("--max-step-s", type=float, default=None, help="skip configs whose step would take longer "
                       "at the measured GEMM rate; default: 2")
    bench.add_argument("--no-torch", action="store_true", help="do not time PyTorch even where installed")
    bench.add_argument("--json", metavar="PATH", help="write the report as JSON (schema in gpubp.benchmark)")
    bench.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG: step/GEMM and GPU speedup against width")
    bench.add_argument("--members", type=_parse_counts, default=None, metavar="K,…",
                       help="instead of the sweep: ensembles of K networks ([64,64,64,10] at batch 256, "
                       "[784,256,10] at batch 128) against K separate networks' steps, in members × samples/s")
    bench.set_defaults(run=_bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args))
    except GpubpError as error:
        print(f"gpubp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpubp: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted ``gpubp train`` left: the checkpoint's last epoch, and how to go on."""
    path = getattr(args, "checkpoint", None)
    metadata = read_metadata(path) if path else None
    if not metadata or not isinstance(metadata.get("progress"), dict):
        return ""
    return (f"; the checkpoint {path} holds epoch {metadata['progress'].get('epoch')}: run the same command "
            f"with --resume to continue")


if __name__ == "__main__":
    sys.exit(main())
