"""The GPU suite (bench/gpu_suite.py) in its tiny CPU form, so that the command prepared for a GPU machine
cannot rot: bench/prepare_gpu.py copies the host ComfyUI as it would travel (without its tests, CI files,
examples and API nodes), and the suite runs on that copy in a subprocess, every stage, on tiny models.
The wheels are not downloaded here (this environment has diffusers and torchsde); the device-like
environment without them was proven once by hand (docs/gpu-suite.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from host.comfy_harness import find_comfyui

ROOT = Path(__file__).resolve().parents[1]
HOST = find_comfyui()
pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    dest = tmp_path_factory.mktemp("gpu_travel")
    subprocess.run([sys.executable, str(ROOT / "bench" / "prepare_gpu.py"), "--dest", str(dest), "--no-wheels"],
                   check=True, capture_output=True, text=True, timeout=300)
    copy = dest / "ComfyUI"
    assert (copy / "main.py").is_file() and (copy / "comfy").is_dir()
    assert not (copy / "tests").exists() and not (copy / "comfy_api_nodes").exists()
    assert (dest / "stubs" / "av" / "container.py").is_file()
    return dest


def suite(prepared, out: Path, *args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, COMFYUI_PATH=str(prepared / "ComfyUI"), PYTHONUNBUFFERED="1")
    env.pop("DPIR_TEST_DEVICE", None)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--out", str(out),
                           "--work", str(out), *args], env=env, capture_output=True, text=True, timeout=timeout)
    path = out / "gpu_suite.json"
    assert path.is_file(), proc.stderr[-3000:]
    return proc, json.loads(path.read_text())


def test_tiny_cpu_suite_runs_every_stage(prepared, tmp_path):
    proc, res = suite(prepared, tmp_path, "--device", "cpu", "--size", "tiny", "--steps", "2", "--reps", "1",
                      "--budget-s", "100000")
    stages = res["stages"]
    failed = {k: v.get("error") for k, v in stages.items() if v["status"] != "ok" and k != "t5xxl"}
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stderr[-3000:]}"
    assert stages["t5xxl"]["status"] == "skipped" and "one size" in stages["t5xxl"]["reason"]
    assert stages["setup"]["data"]["comfy_torch_device"] == "cpu"
    conf = stages["conformance"]["data"]
    assert conf["device"] == "cpu" and conf["passed"] >= 5 and conf["failed"] == 0
    wf = stages["workflows"]["data"]
    assert wf["dpir_restore"]["images"] == [[128, 128, 3]]
    assert wf["dpir_prompt_ablation"]["images"] == [[128, 128, 3]] * 5
    assert wf["dpir_restore_large"]["images"] == [[384, 384, 3]]  # 96² ×4 in 256 px tiles
    ref = stages["reference"]["data"]
    for cfg in ("cfg_1", "cfg_3"):
        assert ref[cfg]["pack_vs_fp32"] < 0.01  # fp32 on both sides here
    steps = stages["steps"]["data"]
    assert steps["dpir_s_per_step"] > 0 and steps["plain_s_per_step"] > 0
    assert set(stages["memory"]["data"]) >= {"128", "384"} and stages["memory"]["data"]["384"]["tiled"]
    large = stages["large"]["data"]
    assert set(large) >= {"256", "512", "peak_ratio", "decode"} and large["peak_ratio"] > 0
    assert large["decode"]["tiles"] > 1 and large["decode"]["three_over_one"] > 0
    assert large["decode"]["one_pass_vs_whole"]["psnr_db"] > 0
    dtypes = stages["weight_dtype"]["data"]
    assert dtypes["fp8_e4m3fn"]["stored_dtype"] == "torch.float8_e4m3fn" and "rel_l2_vs_bf16" in dtypes["default"]
    assert stages["compile"]["data"]["eager_over_compiled"] > 0
    caches = stages["caches"]["data"]["variants"]
    assert set(caches) == {"none", "LazyCache", "EasyCache", "EasyCache, core alone (pack hook removed)"}
    assert caches["none"]["skipped"] == 0 and all(v["steps"] == 28 and v["speed_ratio"] > 0 for v in caches.values())
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| workflows | ok |" in md and "## sampling at 128²" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing setup needs a machine without a GPU")
def test_failed_stage_is_recorded_and_the_budget_cuts_optional_stages(prepared, tmp_path):
    # no GPU here: the setup stage fails with its reason, every other stage says why it did not run
    proc, res = suite(prepared, tmp_path / "cuda", "--device", "cuda", "--size", "tiny", timeout=300)
    assert proc.returncode == 1
    setup = res["stages"]["setup"]
    assert setup["status"] == "failed" and "finds no GPU" in setup["error"]
    assert {v["reason"] for k, v in res["stages"].items() if k != "setup"} == {"setup failed"}
    # a budget already spent: the essential stage runs, the optional one is skipped and says why
    proc, res = suite(prepared, tmp_path / "budget", "--device", "cpu", "--size", "tiny", "--steps", "1",
                      "--reps", "1", "--budget-s", "0", "--only", "steps", "pipeline", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["stages"]["steps"]["status"] == "ok"
    assert res["stages"]["pipeline"]["status"] == "skipped" and "budget" in res["stages"]["pipeline"]["reason"]


def test_host_test_device_follows_dpir_test_device(monkeypatch):
    from host.comfy_harness import device_args, host_device

    monkeypatch.setenv("DPIR_TEST_DEVICE", "cpu")
    assert host_device() == "cpu" and device_args("cpu") == ["--cpu"]
    monkeypatch.setenv("DPIR_TEST_DEVICE", "CUDA")
    assert host_device() == "cuda" and device_args("cuda") == ["--force-fp32"]  # fp32 tolerances hold there
    monkeypatch.delenv("DPIR_TEST_DEVICE")
    assert host_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DPIR_TEST_DEVICE", "gpu")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        host_device()
