"""Every kernel instantiation compiles for sm_90, without a GPU: NVRTC (what CuPy uses) and nvcc.

These tests fail — they do not skip — when a compiler is present and a kernel
does not compile; they skip, saying so, only where no compiler is installed.
`.ci/run` installs NVRTC (pip: nvidia-cuda-nvrtc, from the ``test`` extra).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from cuda_compile import Nvrtc, find_nvcc, find_nvrtc

from gpubp.backends._kernels import COMPILE_OPTIONS, KERNELS, kernel_dir, read_source

ARCH = "sm_90"
CUPY_OPTIONS = ["-ftz=true", "--device-as-default-execution-space"]
"""What CuPy 14's RawModule adds to gpubp's options when it calls NVRTC (cupy/cuda/compiler.py)."""


@pytest.fixture(scope="module")
def nvrtc() -> Nvrtc:
    path = find_nvrtc()
    if path is None:
        pytest.skip("no NVRTC library found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    return Nvrtc(path)


@pytest.mark.parametrize("filename", sorted(KERNELS))
def test_every_instantiation_compiles_with_nvrtc_for_sm90(nvrtc, filename):
    names = KERNELS[filename]
    lowered, cubin_bytes, log = nvrtc.compile(read_source(filename), filename, names,
                                              list(COMPILE_OPTIONS) + CUPY_OPTIONS + [f"-arch={ARCH}"])
    assert set(lowered) == set(names)
    assert len(set(lowered.values())) == len(names)  # one distinct kernel per instantiation
    for name, mangled in lowered.items():
        template = name.split("<")[0].split("::")[-1]
        assert mangled.startswith("_Z") and template in mangled, (name, mangled)
    assert cubin_bytes > 0
    assert "warning" not in log.lower(), log


def test_nvrtc_reports_a_broken_kernel_with_its_log(nvrtc):
    """The compile check can fail: a type error is reported with NVRTC's log."""
    broken = read_source("optim.cu").replace("params[i] = p - mi / denom * step_size;",
                                             "params[i] = p - mi / denom * undefined_symbol;")
    with pytest.raises(Exception, match="undefined_symbol"):
        nvrtc.compile(broken, "optim.cu", KERNELS["optim.cu"], [f"--gpu-architecture={ARCH}"])


def test_every_instantiation_compiles_with_nvcc_for_sm90(tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    names = [name for names in KERNELS.values() for name in names]
    lines = [f'#include "{filename}"' for filename in KERNELS]
    lines.append("void* gpubp_every_kernel[] = {")
    lines += [f"    (void*)&{name}," for name in names]
    lines.append("};")
    source = tmp_path / "all_kernels.cu"
    source.write_text("\n".join(lines) + "\n")
    cubin = tmp_path / "all_kernels.cubin"
    result = subprocess.run([nvcc, "-std=c++17", f"-arch={ARCH}", "-cubin", "-Werror", "all-warnings",
                             "-I", str(kernel_dir()), "-o", str(cubin), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # every instantiation is a kernel of its own (a .text section) in the cubin
    kernels = set(re.findall(rb"\.text\.(_ZN5gpubp[0-9A-Za-z_]+)", cubin.read_bytes()))
    assert len(kernels) == len(names), sorted(kernels)
