"""kernels.capabilities: when the Triton kernels can run, and the package without triton."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import capabilities
from kernels.capabilities import device_name, triton_status

ROOT = Path(__file__).resolve().parents[2]


def test_flags_match_environment():
    assert (os.environ.get("TRITON_INTERPRET") == "1") == capabilities.TRITON_INTERPRET
    try:
        import triton  # noqa: F401

        assert capabilities.HAS_TRITON
    except ImportError:
        assert not capabilities.HAS_TRITON


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", True)
    monkeypatch.setattr(capabilities, "TRITON_INTERPRET", True)
    assert triton_status("cpu") == (True, "")
    monkeypatch.setattr(capabilities, "TRITON_INTERPRET", False)
    ok, why = triton_status(torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET=1" in why


def test_without_triton(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", False)
    assert triton_status("cpu") == (False, "triton is not installed")
    assert triton_status("cuda") == (False, "triton is not installed")


def test_cuda_capability(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", True)
    monkeypatch.setattr(capabilities, "TRITON_INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_status("cuda") == (False, "CUDA is not available")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 0))
    assert triton_status("cuda:0") == (False, "CUDA capability 7.0 < 8.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    assert triton_status("cuda:0") == (True, "")


def test_other_device_types(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", True)
    ok, why = triton_status("meta")
    assert not ok and "meta" in why


def test_device_name(monkeypatch):
    assert device_name("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    assert device_name("cuda:0") == "NVIDIA_H100_80GB_HBM3"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA GeForce RTX 4090-Ti")
    assert device_name("cuda:1") == "NVIDIA_GeForce_RTX_4090_Ti"


def test_package_imports_and_explains_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from kernels import capabilities, moe_experts, moe_routing, launch_config\n"
        "assert not capabilities.HAS_TRITON\n"
        "r = moe_routing.moe_routing_ref(torch.randn(4, 3), 2)\n"
        "x = torch.randn(4, 8)\n"
        "moe_experts.moe_experts_ref(x, torch.randn(3, 6, 8), torch.randn(3, 8, 3), *r[:1], *r[2:])\n"
        "try:\n"
        "    moe_routing.moe_routing(torch.randn(4, 3), 2)\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "moe_routing needs Triton on cpu: triton is not installed" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_status():
    ok, why = triton_status("cuda")
    major, _ = torch.cuda.get_device_capability()
    assert (
        ok == (major >= 8 and capabilities.HAS_TRITON and torch.version.hip is None)
        or capabilities.TRITON_INTERPRET
    )
    assert device_name("cuda") and " " not in device_name("cuda")
