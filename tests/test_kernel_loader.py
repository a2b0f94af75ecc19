"""The kernel loader: finding the sources, inlining headers, the instantiation list, compile errors."""

from __future__ import annotations

import contextlib
import re
import sys
import types

import pytest

from gpubp.activations import ACTIVATIONS
from gpubp.backends import _kernels
from gpubp.backends._kernels import ACTIVATION_FUNCTORS, KERNELS, POINTWISE_LOSSES, kernel_dir, read_source
from gpubp.errors import GpubpError, KernelCompileError
from gpubp.losses import LOSSES


def test_sources_are_found_and_self_contained():
    directory = kernel_dir()
    assert sorted(p.name for p in directory.glob("*.cu")) == sorted(KERNELS)
    for filename in KERNELS:
        text = read_source(filename)
        assert not re.search(r"^\s*#\s*include", text, re.MULTILINE)  # inlined; NVRTC has no system headers
        assert text.count("struct Sigmoid {") == 1  # common.cuh exactly once
        assert text.lstrip().startswith("//"), f"{filename} starts with its header comment"


def test_every_instantiation_names_a_template_of_its_file():
    for filename, names in KERNELS.items():
        text = read_source(filename)
        for name in names:
            template = name.split("<")[0].split("::")[-1]
            assert re.search(rf"__global__ void {template}\(", text), (filename, name)


def test_every_builtin_activation_and_loss_has_a_kernel():
    assert set(ACTIVATION_FUNCTORS) == set(ACTIVATIONS)
    assert set(POINTWISE_LOSSES) | {"cross_entropy", "bce"} == set(LOSSES)
    assert len({n for names in KERNELS.values() for n in names}) == sum(len(n) for n in KERNELS.values())


def test_read_source_inlines_each_header_once(tmp_path):
    (tmp_path / "a.cuh").write_text("#pragma once\nint a;\n")
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\nint b;\n')
    (tmp_path / "k.cu").write_text('#include "a.cuh"\n#include "b.cuh"\nint k;\n')
    text = read_source("k.cu", tmp_path)
    assert text.count("int a;") == 1 and "int b;" in text and "int k;" in text


def test_missing_sources_are_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "site" / "gpubp" / "backends" / "_kernels.py"
    monkeypatch.setattr(_kernels, "__file__", str(fake))
    with pytest.raises(KernelCompileError, match="kernel sources were not found.*reinstall"):
        kernel_dir()


def _stand_in_cupy(monkeypatch, raw_module, compile_exception) -> None:
    """A ``cupy`` module with just what CudaModules touches: RawModule, the current device, CompileException."""
    cupy = types.ModuleType("cupy")
    cupy.RawModule = raw_module
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                      Device=lambda device: contextlib.nullcontext(),
                                      compiler=types.SimpleNamespace(CompileException=compile_exception))
    monkeypatch.setitem(sys.modules, "cupy", cupy)


def test_compile_failure_carries_the_nvrtc_log(monkeypatch):
    """CudaModules turns CuPy's CompileException into a gpubp error holding the compiler's log."""

    class CompileException(Exception):
        pass

    class RawModule:
        def __init__(self, code, options, name_expressions):
            assert "__global__" in code and name_expressions == KERNELS["optim.cu"]

        def get_function(self, name):
            raise CompileException("optim.cu(12): error: identifier \"oops\" is undefined")

    _stand_in_cupy(monkeypatch, RawModule, CompileException)
    modules = _kernels.CudaModules()
    with pytest.raises(KernelCompileError, match='(?s)kernels/optim.cu failed to compile.*"oops" is undefined') as info:
        modules.get("optim.cu", "gpubp::sgd_step<float>", 0)
    assert isinstance(info.value, GpubpError) and isinstance(info.value, RuntimeError)
    assert not modules._modules  # a failed module is not cached; the next call retries


@pytest.mark.parametrize("failure,text", [
    (RuntimeError("cannot open source file \"cuda_fp16.h\""), "RuntimeError: cannot open source file"),
    (ImportError("libnvrtc.so.13: cannot open shared object file"), "ImportError: libnvrtc.so.13"),
])
def test_loading_failures_other_than_compile_errors_carry_context(monkeypatch, failure, text):
    class CompileException(Exception):
        pass

    class RawModule:
        def __init__(self, code, options, name_expressions):
            pass

        def get_function(self, name):
            raise failure

    _stand_in_cupy(monkeypatch, RawModule, CompileException)
    modules = _kernels.CudaModules()
    message = f"kernels/loss.cu could not be compiled or loaded on device 0: {text}"
    with pytest.raises(KernelCompileError, match=message):
        modules.get("loss.cu", "gpubp::one_hot<float>", 0)
    assert not modules._modules
