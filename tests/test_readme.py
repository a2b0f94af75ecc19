"""Every code block of README.md runs, so an example cannot rot.

Python blocks run in order in one namespace (later blocks use names of earlier ones), in a temporary
directory. Shell blocks: every ``gpubp`` command runs through the CLI's ``main`` with small data
(Fashion-MNIST replaced by a few hundred generated images through ``$GPUBP_DATA``; one epoch; a
one-configuration sweep), and every other command must be one of the few the README may show
without running (installing, the test suite itself). The synopsis block's options must all exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)

NOT_RUN = ("python -m pip install", "python -m pytest", "sudo apt-get install", "PYTHONPATH=. python bench/",
           "bash bench/gpu_acceptance.sh")
"""Shell commands the README shows that a test does not run: installs, the test suite itself, and the GPU
acceptance script (tests/test_acceptance.py runs it)."""

SMALL = {
    "selftest": ["--quick"],
    "train": ["--epochs", "1", "--samples", "300", "--no-progress", "--backend", "numpy"],
    "bench": ["--widths", "64", "--depths", "2", "--batches", "256", "--repeats", "1", "--no-torch",
              "--backend", "numpy"],
}


@pytest.fixture
def small_world(tmp_path, monkeypatch):
    """A temporary working directory, and a small Fashion-MNIST where gpubp looks for it."""
    from test_datasets import _fake_fashion_mnist

    _fake_fashion_mnist(tmp_path / "data" / "fashion-mnist", n_train=600, n_test=100)
    monkeypatch.setenv("GPUBP_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_the_blocks_this_test_expects():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 3 and "" in kinds


def test_the_python_examples_run(small_world):
    pytest.importorskip("matplotlib", reason="the README's examples draw plots (gpubp[plot])")
    namespace: dict = {}
    for kind, code in BLOCKS:
        if kind == "python":
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 — the README's own examples
    assert (small_world / "spirals.npz").is_file() and (small_world / "run.ckpt.npz").is_file()
    assert 0.0 <= namespace["net"].evaluate(namespace["X_test"], namespace["y_test"])["accuracy"] <= 1.0


def _shell_commands() -> list[str]:
    commands = []
    for kind, code in BLOCKS:
        if kind != "bash":
            continue
        for line in code.splitlines():
            line = line.split("  #")[0].strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def test_the_shell_examples_run(small_world, capsys):
    pytest.importorskip("matplotlib", reason="the README's examples draw plots (gpubp[plot])")
    from gpubp.cli import main

    ran = []
    for command in _shell_commands():
        if command.startswith(NOT_RUN):
            continue
        words = shlex.split(command)
        if words[:2] == ["mpiexec", "-n"]:  # here as one process: the launch itself is tests/test_distributed.py's
            words = words[3:]
        assert words[0] == "gpubp", f"a README command this test neither runs nor allows: {command!r}"
        argv = words[1:] + SMALL.get(words[1], [])
        assert main(argv) == 0, f"{command!r} failed: {capsys.readouterr().err}"
        ran.append(words[1])
    assert ran.count("train") >= 2 and ran.count("bench") >= 2 and "selftest" in ran and "info" in ran
    assert (small_world / "curves.png").is_file() and (small_world / "bench.json").is_file()


def test_the_synopsis_names_only_options_that_exist():
    from gpubp.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps sub-parsers here
    synopsis = next(code for kind, code in BLOCKS if kind == "" and "gpubp [-v] train" in code)
    checked = 0
    for entry in re.split(r"^gpubp ", synopsis, flags=re.M)[1:]:
        name = entry.replace("[-v]", "").split()[0]
        known = {option for action in commands[name]._actions for option in action.option_strings}
        named = set(re.findall(r"(--[a-z][a-z-]*)", entry))
        assert named <= known, f"gpubp {name}: {sorted(named - known)} are not options"
        checked += len(named)
    assert checked > 30
