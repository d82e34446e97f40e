"""ComfyUI-DPIR GPU suite: correctness on CUDA and the figures at real shapes, in one command.

    python bench/gpu_suite.py --out DIR [--budget-s 420] [--device cuda|cpu] [--size sd3-medium|tiny]
                              [--only STAGE ...] [--skip STAGE ...]

On a GPU machine without network or ComfyUI, prepare what travels with ``python bench/prepare_gpu.py`` and
run the command it prints (docs/gpu-suite.md). ``--device cpu --size tiny`` is the same suite on tiny models,
the form CI runs (tests/test_gpu_suite.py).

It writes random weights in the official formats at the real shapes (bench/real_weights.py; SD3-medium DiT + LQ
branch, robust VAE, stock VAE, ViT-B/32, ViT-bigG, a T5 embedding file; T5-XXL for its own stage), imports
ComfyUI in this process on the GPU (not --cpu) with the pack, and runs the stages below. After every stage
it rewrites DIR/gpu_suite.json and DIR/gpu_suite.md, so a killed run still leaves what it measured. A stage
that fails is recorded with its error and the suite goes on. Essential stages always run; an optional stage
is skipped when its estimated time would take the run past --budget-s (seconds since start).

essential
  setup        weights written, ComfyUI + pack imported; versions, card
  conformance  the host conformance tests on this device (DPIR_TEST_DEVICE): fp32 at tiny shapes vs
               tests/reference.py to 1e-4, CFG on and off, tiled one-tile equality, each weight dtype
  workflows    the three shipped workflows at real shapes through ComfyUI's executor (1024² restore and
               prompt ablation (its captioner a tiny random VLM), the large one to a 4096² output): exact output size, not blank; NaN/Inf are
               refused by the pack's own checks (DPIR Colour Fix), so a finished run had finite images
  reference    the pack at 1024² in bf16 (and fp16 weights) vs the diffusers reference in fp32 and in bf16,
               CFG off and on: relative L2 error of the restored image; bound: the pack's error ≤ 2× the
               reference's own bf16 error + 0.01
  steps        seconds per sampling step at 1024², DPIR vs plain SD3 of the same transformer; the DiT's
               TFLOP/s (analytic MMDiT FLOPs) against the card's bf16 matmul rate measured here
optional (in this order)
  pipeline     the pack end to end vs the diffusers reference (bf16), stage breakdown with peak memory
  memory       peak memory per stage at 1024², 2048², 4096² (tiled; models offloaded between stages)
  large        dpir_restore_large at 2K/4K/8K outputs: peak memory and seconds per stage, 8K/2K peak ratio; one-pass
               tiled decode vs VAEDecodeTiled (three tilings) at the same tile size, both against the untiled decode
  weight_dtype sampling at 1024² with each weight_dtype (default, bf16, fp8_e4m3fn, fp8_e4m3fn_fast): s/step,
               peak memory, difference from bf16
  caches       core's step caches (LazyCache, EasyCache, EasyCache without the pack's hook) vs uncached
               sampling at 28 steps on the main image: steps skipped, speed ratio, PSNR against uncached
  t5xxl        T5-XXL at its real size (random fp16 file) through the core Load CLIP (type sd3) and DPIR T5
               Text Prompt: load and encode time, memory
  compile      TorchCompileModel (inductor) on the DPIR model: compile time, eager/compiled per step
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

T0 = time.monotonic()  # the budget counts from here (torch's import included)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / ".gpu" / "stubs"
if importlib.util.find_spec("av") is None and STUBS.is_dir():
    sys.path.append(str(STUBS))  # bench/prepare_gpu.py's PyAV stand-in, only where av is not installed
if os.environ.get("COMFYUI_PATH") is None and (ROOT / ".gpu" / "ComfyUI" / "main.py").is_file():
    os.environ["COMFYUI_PATH"] = str(ROOT / ".gpu" / "ComfyUI")  # the copy bench/prepare_gpu.py made
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402  (bench.py puts tests/ on sys.path)
import real_weights as rw  # noqa: E402
from host.comfy_harness import QuietServer, load_workflow_api, object_info_of  # noqa: E402

ESSENTIAL = ("setup", "conformance", "workflows", "reference", "steps")
OPTIONAL = ("pipeline", "memory", "large", "weight_dtype", "caches", "t5xxl", "compile")
# seconds each optional stage is expected to take on an H200 at real shapes (the budget's yardstick)
ESTIMATE_S = {"pipeline": 30, "memory": 60, "large": 120, "weight_dtype": 45, "t5xxl": 90, "compile": 150,
              "caches": 90}
WEIGHT_DTYPES = ("default", "bf16", "fp8_e4m3fn", "fp8_e4m3fn_fast")
SIZES = {  # px: main image, memory sizes, large workflow input (×4), tile
    "sd3-medium": {"image": 1024, "memory": [1024, 2048, 4096], "large_input": 1024, "tile": 1024,
                   "large": [2048, 4096, 8192], "vae": 2048},
    "tiny": {"image": 128, "memory": [128, 384], "large_input": 96, "tile": 256,  # 256 px: the smallest tile
             "large": [256, 512], "vae": 256},
}
CONFORMANCE_TESTS = {
    "sd3-medium": ["tests/host/test_conformance.py", "tests/host/test_tiled.py", "tests/host/test_weight_dtype.py"],
    # CI runs these files whole already; the tiny form keeps the stage alive with two of them
    "tiny": ["tests/host/test_conformance.py::test_sampling_equals_reference",
             "tests/host/test_tiled.py::test_image_in_one_tile_gives_exactly_the_untiled_result"],
}


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def mem(m: bench.Memory) -> dict:
    return {"seconds": round(m.seconds, 4), "peak_mib": mib(m.peak_bytes), "delta_mib": mib(m.delta_bytes)}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm())


class Suite:
    """Runs stages, records each (status, seconds, data or error) and rewrites the JSON and markdown."""

    def __init__(self, args):
        self.args, self.t0 = args, T0
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = {"suite": "ComfyUI-DPIR gpu_suite", "args": vars(args), "started": time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "stages": {}}
        self.ctx = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self, name, fn, essential):
        rec = self.results["stages"].setdefault(name, {})
        if (self.args.only and name not in self.args.only) or name in self.args.skip:
            rec.update(status="skipped", reason="not selected")
            return self.write()
        if not essential and self.elapsed() + ESTIMATE_S[name] > self.args.budget_s:
            rec.update(status="skipped", reason=f"budget: {self.elapsed():.0f} s spent, ~{ESTIMATE_S[name]} s more "
                                                f"would pass --budget-s {self.args.budget_s:.0f}")
            return self.write()
        rec.update(status="running", started_at_s=round(self.elapsed(), 1))
        self.write()
        print(f"[{self.elapsed():6.1f} s] {name} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            rec["data"] = fn(self)
            rec["status"] = "ok"
        except SkipStage as e:
            rec.update(status="skipped", reason=str(e))
        except (Exception, SystemExit) as e:  # recorded; the suite goes on
            rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000],
                       traceback=traceback.format_exc()[-4000:])
            print(f"  {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            rec["seconds"] = round(time.monotonic() - t, 1)
            free_memory(self)
        self.write()

    def write(self):
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        try:
            md = markdown(self.results)
        except Exception:  # the JSON is the record; the table must not stop the suite
            md = "markdown table failed:\n\n```\n" + traceback.format_exc() + "```\n"
        for path, text in ((self.out / "gpu_suite.json", json.dumps(self.results, indent=1, default=str)),
                           (self.out / "gpu_suite.md", md)):
            tmp = path.with_suffix(path.suffix + ".partial")
            tmp.write_text(text)
            tmp.replace(path)


def free_memory(suite):
    gc.collect()
    if "nodes" in suite.ctx:
        import comfy.model_management

        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache(True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- stages

def stage_setup(suite):
    args = suite.args
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch finds no GPU (use --device cpu --size tiny for the dry run)")
    spec = bench.spec_for(args.size)
    base = Path(tempfile.mkdtemp(prefix="dpir-gpu-suite-", dir=args.work))
    t = time.monotonic()
    models = base / "models"
    rw.write_model_set(models, args.size, log=lambda m: print("  " + m, file=sys.stderr), device=device.type)
    write_s = time.monotonic() - t
    t = time.monotonic()
    nodes = bench.start_host(base, device.type, extra_nodes=True)
    import comfy.model_management
    import folder_paths

    suite.ctx.update(device=device, spec=spec, base=base, models=models, nodes=nodes, sizes=SIZES[args.size])
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    info = {"write_weights_s": round(write_s, 1), "import_comfyui_s": round(time.monotonic() - t, 1),
            "weights_gib": round(sum(f.stat().st_size for f in models.rglob("*") if f.is_file()) / 2**30, 2),
            "model": f"{args.size}: {spec.num_layers} blocks, width {spec.hidden}, context {spec.joint_attention_dim}",
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "comfyui": comfyui_version(), "pack_commit": git_commit(),
            "comfy_torch_device": str(comfy.model_management.get_torch_device()),
            "vae_dtype": str(comfy.model_management.vae_dtype(comfy.model_management.get_torch_device()))}
    if device.type == "cuda":
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def stage_conformance(suite):
    """The host tests that run in-process, on this device, in a pytest subprocess (its own ComfyUI import)."""
    env = dict(os.environ, DPIR_TEST_DEVICE=suite.ctx["device"].type, PYTHONUNBUFFERED="1")
    if str(STUBS) in sys.path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(STUBS)) if p)
    report = suite.out / "conformance.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
           *CONFORMANCE_TESTS[suite.args.size]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    import xml.etree.ElementTree as ET

    cases = []
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            status = "failed" if bad is not None else "skipped" if case.find("skipped") is not None else "passed"
            cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "status": status,
                          "seconds": float(case.get("time", 0)),
                          **({"message": (bad.get("message") or "")[:500]} if bad is not None else {})})
    counts = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "skipped")}
    data = {"returncode": proc.returncode, **counts, "device": env["DPIR_TEST_DEVICE"], "tests": cases,
            "summary": tail[-1] if tail else ""}
    if proc.returncode != 0:
        raise RuntimeError(f"pytest exit {proc.returncode}: {data['summary']}\n" + "\n".join(tail[-30:]))
    return data


def stage_workflows(suite):
    """The shipped UI workflows, converted as the frontend would, executed by ComfyUI's PromptExecutor."""
    import asyncio
    import uuid

    import execution
    import folder_paths
    import nodes
    import numpy as np
    from PIL import Image

    from host.dpir_env import PHOTO, api_of, write_photo

    sizes, steps = suite.ctx["sizes"], suite.args.steps
    info = object_info_of(nodes.NODE_CLASS_MAPPINGS)
    wf_api = load_workflow_api()
    # the writer names the files as the workflows do; a sharded transformer is listed by its index
    rename = {"transformer/diffusion_pytorch_model.safetensors": bench.transformer_name(suite.ctx["models"])}
    s, big = sizes["image"], sizes["large_input"]
    cases = [("dpir_restore", s, {"DPIRRobustVAEEncode": {"resize": "long side", "long_side": s}}, 1, (s, s)),
             ("dpir_prompt_ablation", s, {"DPIRRobustVAEEncode": {"resize": "long side", "long_side": s},
                                          "DPIRCaption": {"caption_model": tiny_captioner(), "max_new_tokens": 12}},
              5, (s, s)),
             ("dpir_restore_large", big, {"DPIRRobustVAEEncode": {"resize": "upscale factor", "upscale_factor": 4.0},
                                          "DPIRTiledPrompt": {"tile_size": sizes["tile"],
                                                              "tile_overlap": sizes["tile"] // 8}},
              1, (4 * big, 4 * big))]
    out, failures = {}, []
    for name, side, overrides, n_images, shape in cases:
        write_photo(Path(folder_paths.get_input_directory()) / PHOTO, side, side, seed=1)
        prefix = f"suite_{name}_{uuid.uuid4().hex[:6]}"
        api = api_of(name, None, info, wf_api, DPIRSamplerPatch={"steps": steps},
                     SaveImage={"filename_prefix": prefix}, **overrides)
        for node in api.values():
            for k, v in node["inputs"].items():
                if isinstance(v, str) and v in rename:
                    node["inputs"][k] = rename[v]
        rec = out.setdefault(name, {"input_px": side, "expected_hw": list(shape), "steps": steps})
        try:
            ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), api, None))
            if not ok:
                raise RuntimeError(f"validation: {json.dumps(node_errors or error)[:1500]}")
            executor = bench.load_compat().prompt_executor(QuietServer())
            with bench.Memory(suite.ctx["device"]) as m:
                executor.execute(api, str(uuid.uuid4()), {}, outputs)
            if not executor.success:
                msg = next((d for e, d in executor.status_messages if e == "execution_error"), {})
                raise RuntimeError(f"node {msg.get('node_type')} #{msg.get('node_id')}: "
                                   f"{msg.get('exception_type')}: {msg.get('exception_message')}")
            saved = [img for o in executor.history_result["outputs"].values() for img in o.get("images", [])
                     if img.get("type") == "output"]
            images = [np.asarray(Image.open(Path(folder_paths.get_output_directory(), i.get("subfolder", ""),
                                                 i["filename"]))) for i in saved]
            rec.update(mem(m), images=[list(i.shape) for i in images],
                       std=[round(float(i.std()), 2) for i in images])
            problems = [f"{len(images)} images, expected {n_images}"] if len(images) != n_images else []
            problems += [f"image {i.shape[:2]} != {shape}" for i in images if tuple(i.shape[:2]) != shape]
            problems += ["a blank image" for i in images if i.std() == 0]
            rec["status"] = "failed: " + "; ".join(problems) if problems else "ok"
        except Exception as e:
            rec["status"] = f"failed: {type(e).__name__}: {e}"[:1500]
        if rec["status"] != "ok":
            failures.append(f"{name}: {rec['status']}")
        free_memory(suite)
    if failures:
        raise RuntimeError("; ".join(failures) + " | " + json.dumps(out, default=str)[:1500])
    return out


def tiny_captioner() -> str:
    """A tiny random Qwen2.5-VL (tests/tiny_vlms.py) in models/LLM for the ablation's DPIR Caption: the suite
    measures the restoration, not the captioner; its entry in the caption node's list."""
    import folder_paths
    import tiny_vlms

    folder = Path(folder_paths.models_dir) / "LLM" / "tiny-qwen2.5-vl"
    if not (folder / "config.json").is_file():
        tiny_vlms.write_qwen25_vl(folder)
    return f"{folder.name}/config.json"


def loaded_models(suite, weight_dtype=None):
    if weight_dtype is None and "loaded" in suite.ctx:
        return suite.ctx["loaded"]
    loaded = bench.load_pack_models(suite.ctx["nodes"], suite.ctx["models"], suite.ctx["device"])
    if weight_dtype is not None:
        model, branch = suite.ctx["nodes"]["DPIRModelLoader"]().load(bench.transformer_name(suite.ctx["models"]),
                                                                     weight_dtype)
        return (model, branch) + tuple(loaded[2:])
    suite.ctx["loaded"] = loaded
    return loaded


def stage_reference(suite):
    """The pack vs the diffusers reference at real shapes, relative L2 error of the restored image (before the
    colour fix, which the reference does not do)."""
    device, spec, models = suite.ctx["device"], suite.ctx["spec"], suite.ctx["models"]
    s, steps = suite.ctx["sizes"]["image"], suite.args.steps
    image = bench.test_image(s)
    low = torch.bfloat16 if device.type == "cuda" else torch.float32  # the CPU reference is fp32 only
    out, failures = {"image_px": s, "steps": steps, "pack_dit": bench.weight_dtype(device, models),
                     "bound": "pack error ≤ 2 × reference bf16 error + 0.01 (vs the fp32 reference)"}, []
    refs = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # an IEEE fp32 reference
    try:
        for dtype in dict.fromkeys((torch.float32, low)):
            run = bench.reference_runner(spec, models, device, image, steps, dtype=dtype)  # one warm-up run inside
            for cfg in (1.0, 3.0):
                run(cfg)
                refs[dtype, cfg] = run.output.float().cpu().movedim(1, -1)
            del run
            free_memory(suite)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for cfg in (1.0, 3.0):
        fp32, bf16 = refs[torch.float32, cfg], refs[low, cfg]
        row = {"reference_bf16_vs_fp32": rel_l2(bf16, fp32)}
        variants = [("pack", None)] + ([("pack_fp16_weights", "fp16")] if device.type == "cuda" else [])
        for name, weight_dtype in variants:
            outputs = {}
            bench.run_pack(suite.ctx["nodes"], loaded_models(suite, weight_dtype), image, steps, device, cfg=cfg,
                           outputs=outputs)
            decoded = outputs["decoded"]
            if decoded.shape != fp32.shape or not torch.isfinite(decoded).all():
                raise RuntimeError(f"pack output {tuple(decoded.shape)} (finite: {bool(torch.isfinite(decoded).all())})"
                                   f", reference {tuple(fp32.shape)}")
            row[f"{name}_vs_fp32"] = rel_l2(decoded, fp32)
            row[f"{name}_vs_reference_bf16"] = rel_l2(decoded, bf16)
            bound = 2 * row["reference_bf16_vs_fp32"] + 0.01
            if row[f"{name}_vs_fp32"] > bound:
                failures.append(f"cfg {cfg}: {name} error {row[f'{name}_vs_fp32']:.4f} > bound {bound:.4f}")
            free_memory(suite)
        out[f"cfg_{cfg:g}"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
    if failures:
        raise RuntimeError("; ".join(failures) + " | " + json.dumps(out))
    return out


def positive_prompt(suite, loaded):
    nodes = suite.ctx["nodes"]
    visual = nodes["DPIRVisualPrompt"]().encode(loaded[3], loaded[4], bench.test_image(256))[0]
    text = nodes["DPIRT5TextPrompt"]().encode("", t5_embedding="prompt.safetensors")["result"][0]
    return nodes["DPIRDualPrompt"]().combine(visual, text)[0]


def dpir_sampler(suite, model, branch, positive, z, steps):
    nodes = suite.ctx["nodes"]
    patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    return patched, nodes["DPIRSamplerPatch"]().patch(patched, positive, steps, 1.0, 3.0)[1:]


def matmul_tflops(device) -> float | None:
    """This card's bf16 matmul rate (8192³, median of 10 after 3 warm-ups), the ceiling the DiT is held to."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def stage_steps(suite):
    """Seconds per step, DPIR vs plain SD3 (same transformer, prompt, steps), back to back in alternating order;
    the DiT's achieved TFLOP/s from the DPIR time (the LQ branch runs once per image, not per step)."""
    device, spec = suite.ctx["device"], suite.ctx["spec"]
    s, steps, reps = suite.ctx["sizes"]["image"], suite.args.steps, suite.args.reps
    loaded = loaded_models(suite)
    positive = positive_prompt(suite, loaded)
    z = torch.randn(1, 16, s // 8, s // 8, generator=torch.Generator().manual_seed(1))
    _, dpir = dpir_sampler(suite, loaded[0], loaded[1], positive, z, steps)
    plain = bench.plain_sd3(loaded[0], positive, steps)
    bench.timed_pair(dpir, plain, z, 0, device)  # warm-up
    pairs = [bench.timed_pair(dpir, plain, z, rep, device) for rep in range(reps)]
    t_dpir = statistics.median(a for a, _ in pairs) / steps
    t_plain = statistics.median(b for _, b in pairs) / steps
    flops = bench.mmdit_flops(spec, (s // 16) ** 2)
    achieved = flops / t_dpir / 1e12
    measured = matmul_tflops(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else None
    sheet = next((v for k, v in bench.BF16_PEAK_TFLOPS.items() if name and k in name), None)
    return {"image_px": s, "steps": steps, "reps": reps, "dpir_s_per_step": round(t_dpir, 5),
            "plain_s_per_step": round(t_plain, 5), "dpir_over_plain": round(t_dpir / t_plain, 4),
            "per_rep_s": [[round(a, 4), round(b, 4)] for a, b in pairs],
            "dit_forward_tflop": float(f"{flops / 1e12:.4g}"), "dit_tflops": float(f"{achieved:.4g}"),
            "card_bf16_matmul_tflops_measured": measured and round(measured, 1),
            "fraction_of_measured": measured and round(achieved / measured, 3),
            "card_bf16_datasheet_tflops": sheet, "fraction_of_datasheet": sheet and round(achieved / sheet, 3)}


def stage_pipeline(suite):
    device, spec, models = suite.ctx["device"], suite.ctx["spec"], suite.ctx["models"]
    s, steps, reps = suite.ctx["sizes"]["image"], suite.args.steps, suite.args.reps
    loaded, image = loaded_models(suite), bench.test_image(s)
    bench.run_pack(suite.ctx["nodes"], loaded, image, steps, device)  # warm-up
    ref = bench.reference_runner(spec, models, device, image, steps)
    per_stage, pack, theirs = {}, [], []
    for _ in range(reps):
        stages = bench.run_pack(suite.ctx["nodes"], loaded, image, steps, device)[0]
        for k, m in stages.items():
            per_stage.setdefault(k, []).append(mem(m))
        pack.append(sum(m.seconds for m in stages.values()))
        theirs.append(ref())
    return {"image_px": s, "steps": steps, "reps": reps, "pack_s": [round(x, 3) for x in pack],
            "reference_s": [round(x, 3) for x in theirs],
            "reference_over_pack": round(statistics.median(r / p for r, p in zip(theirs, pack)), 3),
            "stages": {k: {"seconds": statistics.median(x["seconds"] for x in v),
                           "peak_mib": statistics.median(x["peak_mib"] for x in v),
                           "delta_mib": statistics.median(x["delta_mib"] for x in v)} for k, v in per_stage.items()}}


def stage_memory(suite):
    device, sizes = suite.ctx["device"], suite.ctx["sizes"]
    loaded = loaded_models(suite)
    offload = device.type == "cuda"
    out = {"offloaded_between_stages": offload, "steps": 1}
    for s in sizes["memory"]:
        tiles = s > sizes["tile"]
        stages = bench.run_pack(suite.ctx["nodes"], loaded, bench.test_image(s), 1, device, tiles=tiles,
                                offload=offload, tile=sizes["tile"])[0]
        out[f"{s}"] = {"tiled": tiles, "stages": {k: mem(m) for k, m in stages.items()}}
        suite.results["stages"]["memory"]["data"] = out  # a kill inside the next size keeps this one
        suite.write()
    return out


def stage_large(suite):
    """dpir_restore_large at 2K/4K/8K outputs (×4 of a quarter-size photo, tiled sampling, the VAE's whole-image/tile
    choice by memory): peak memory and seconds per stage; then one-pass tiled decode (DPIR VAE Decode) vs
    VAEDecodeTiled (three tilings) at the same tile size and overlap, and both against the untiled decode."""
    from nodes import VAEDecodeTiled

    device, sizes, nodes = suite.ctx["device"], suite.ctx["sizes"], suite.ctx["nodes"]
    loaded = loaded_models(suite)
    out = {"steps": 1, "tile": sizes["tile"]}
    for s in sizes["large"]:
        stages = bench.run_pack(nodes, loaded, bench.test_image(s // 4), 1, device, tiles=True, tile=sizes["tile"],
                                upscale=4.0)[0]
        out[f"{s}"] = {"stages": {k: mem(m) for k, m in stages.items()},
                       "peak_mib": round(max(mib(m.peak_bytes) for m in stages.values()), 1),
                       "vae_encode": getattr(stages["robust VAE encode"], "note", "")}
        suite.results["stages"]["large"]["data"] = out  # a kill inside the next size keeps this one
        suite.write()
    lo, hi = min(sizes["large"]), max(sizes["large"])
    out["peak_ratio"] = round(out[f"{hi}"]["peak_mib"] / out[f"{lo}"]["peak_mib"], 3)
    vae, tvae = loaded[2], sys.modules[f"{bench.PACK_NAME}.nodes.tiled_vae"]
    tile, overlap = sizes["tile"] // 2, 64
    z = bench.photo_latent(sizes["vae"] // 8) * 0.5
    with bench.Memory(device) as one:
        a, choice = tvae.decode(vae, z, "on", tile_px=tile, overlap_px=overlap)
    with bench.Memory(device) as three:
        b = VAEDecodeTiled().decode(vae, {"samples": z}, tile, overlap)[0]
    with bench.Memory(device) as whole:
        w = vae.decode(z)
    out["decode"] = {"image_px": sizes["vae"], "tile_px": tile, "overlap_px": overlap, "tiles": choice.plan.count,
                     "one_pass": mem(one), "three_tilings": mem(three), "whole": mem(whole),
                     "three_over_one": round(three.seconds / one.seconds, 3),
                     "one_pass_vs_whole": {"max": float((a - w).abs().max()), "mean": float((a - w).abs().mean()),
                                           "psnr_db": round(bench.psnr(a, w), 2)},
                     "three_vs_whole": {"max": float((b - w).abs().max()), "mean": float((b - w).abs().mean()),
                                        "psnr_db": round(bench.psnr(b, w), 2)}}
    return out


def stage_weight_dtype(suite):
    device, s, steps = suite.ctx["device"], suite.ctx["sizes"]["image"], suite.args.steps
    base = loaded_models(suite)
    positive = positive_prompt(suite, base)
    z = torch.randn(1, 16, s // 8, s // 8, generator=torch.Generator().manual_seed(1))
    out, latents = {"image_px": s, "steps": steps}, {}
    import comfy.sample

    for wd in WEIGHT_DTYPES:
        free_memory(suite)
        try:
            model, branch = suite.ctx["nodes"]["DPIRModelLoader"]().load(bench.transformer_name(suite.ctx["models"]),
                                                                         wd)
            _, (guider, sampler, sigmas) = dpir_sampler(suite, model, branch, positive, z, steps)
            noise = comfy.sample.prepare_noise(z, 0)
            guider.sample(noise, z, sampler, sigmas, seed=0)  # warm-up (loads the weights)
            with bench.Memory(device) as m:
                latents[wd] = guider.sample(noise, z, sampler, sigmas, seed=0).float().cpu()
            out[wd] = {"s_per_step": round(m.seconds / steps, 5), "peak_mib": mib(m.peak_bytes),
                       "model_size_mib": mib(model.model_size()),
                       "stored_dtype": str(next(p.dtype for n, p in model.model.diffusion_model.named_parameters()
                                                if n.endswith("attn.qkv.weight")))}
        except Exception as e:
            out[wd] = {"error": f"{type(e).__name__}: {e}"[:800]}
    for wd, lat in latents.items():
        if "bf16" in latents:
            out[wd]["rel_l2_vs_bf16"] = round(rel_l2(lat, latents["bf16"]), 5)
    return out


def stage_t5xxl(suite):
    """T5-XXL at its real size: a random fp16 file in ComfyUI's t5xxl layout, Load CLIP (type sd3), DPIR T5
    Text Prompt. ComfyUI builds T5-XXL at full size whatever the file holds, so there is no tiny form."""
    if suite.args.size != "sd3-medium":
        raise SkipStage("T5-XXL has one size (ComfyUI builds it at 4.7 B parameters whatever the file holds)")
    import nodes

    device = suite.ctx["device"]
    path = suite.ctx["models"] / "text_encoders" / "t5xxl_fp16.safetensors"
    spec = suite.ctx["spec"]
    t = time.monotonic()
    rw.write_safetensors(path, rw.t5_shapes(spec), torch.float16, spec, "t5", device=device.type)  # as --t5xxl
    write_s = time.monotonic() - t
    with bench.Memory(device) as load:
        clip = nodes.CLIPLoader().load_clip(path.name, "sd3")[0]
    prompt = suite.ctx["nodes"]["DPIRT5TextPrompt"]()
    with bench.Memory(device) as first:
        cond = prompt.encode("a sharp, detailed photo of a cat", clip=clip)["result"][0]
    with bench.Memory(device) as again:
        prompt.encode("a sharp, detailed photo of a dog", clip=clip)
    tokens = cond[0][0]
    if tuple(tokens.shape) != (1, 256, 4096) or not torch.isfinite(tokens).all():
        raise RuntimeError(f"T5 tokens {tuple(tokens.shape)}, finite {bool(torch.isfinite(tokens).all())}")
    return {"file_gib": round(path.stat().st_size / 2**30, 2), "write_s": round(write_s, 1),
            "load_clip": mem(load), "encode_first (loads to the device)": mem(first), "encode_again": mem(again),
            "tokens": list(tokens.shape)}


def stage_compile(suite):
    import torch._dynamo
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    device, s, steps, reps = suite.ctx["device"], suite.ctx["sizes"]["image"], suite.args.steps, suite.args.reps
    loaded = loaded_models(suite)
    positive = positive_prompt(suite, loaded)
    z = torch.randn(1, 16, s // 8, s // 8, generator=torch.Generator().manual_seed(1))
    patched, eager = dpir_sampler(suite, loaded[0], loaded[1], positive, z, steps)
    torch._dynamo.reset()
    compiled_model = TorchCompileModel.execute(patched, "inductor").result[0]
    compiled = suite.ctx["nodes"]["DPIRSamplerPatch"]().patch(compiled_model, positive, steps, 1.0, 3.0)[1:]
    t = time.monotonic()
    bench.timed_pair(compiled, eager, z, 0, device)  # compiles (and warms eager)
    compile_s = time.monotonic() - t
    pairs = [bench.timed_pair(eager, compiled, z, rep, device) for rep in range(reps)]
    return {"image_px": s, "steps": steps, "compile_and_first_run_s": round(compile_s, 1),
            "eager_s_per_step": round(statistics.median(a for a, _ in pairs) / steps, 5),
            "compiled_s_per_step": round(statistics.median(b for _, b in pairs) / steps, 5),
            "eager_over_compiled": round(statistics.median(a / b for a, b in pairs), 3)}


CACHE_STEPS = 28  # the official step count: what an artist adds a cache to


def stage_caches(suite):
    device, s, reps = suite.ctx["device"], suite.ctx["sizes"]["image"], suite.args.reps
    rows = bench.step_caches(suite.ctx["nodes"], loaded_models(suite), bench.test_image(s), CACHE_STEPS, reps, device,
                             0.2)
    return {"image_px": s, "steps": CACHE_STEPS, "reps": reps, "reuse_threshold": 0.2, "variants": rows}


class SkipStage(Exception):
    pass


# ---------------------------------------------------------------- report

def comfyui_version():
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return None


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def markdown(results) -> str:
    st = results["stages"]
    setup = st.get("setup", {}).get("data", {})
    lines = [f"# ComfyUI-DPIR GPU suite: {setup.get('device', '?')}", "",
             f"{results['started']}; {results.get('elapsed_s', 0):.0f} s; model {setup.get('model', '?')}; torch "
             f"{setup.get('torch', '?')}, ComfyUI {setup.get('comfyui', '?')}, pack {setup.get('pack_commit', '?')}",
             "", "| stage | status | seconds | note |", "|---|---|---|---|"]
    for name, rec in st.items():
        note = rec.get("error") or rec.get("reason") or ""
        lines.append(f"| {name} | {rec.get('status')} | {rec.get('seconds', '')} | {note[:200]} |")
    d = st.get("conformance", {}).get("data")
    if d:
        lines += ["", f"## conformance on {d['device']}: {d['passed']} passed, {d['failed']} failed, "
                      f"{d['skipped']} skipped"]
        lines += [f"- FAILED {c['test']}: {c.get('message', '')[:200]}" for c in d["tests"] if c["status"] == "failed"]
    d = st.get("workflows", {}).get("data")
    if d:
        lines += ["", "## shipped workflows", "", "| workflow | input px | output (h, w, c) | seconds | peak MiB | status |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['input_px']}² | {v.get('images')} | {v.get('seconds', '')} | {v.get('peak_mib', '')} | "
                  f"{v['status'][:120]} |" for k, v in d.items()]
    d = st.get("reference", {}).get("data")
    if d:
        lines += ["", f"## pack vs diffusers reference, {d['image_px']}², {d['steps']} steps (relative L2 error of "
                      f"the restored image; bound: {d['bound']})", "", "| CFG | measure | value |", "|---|---|---|"]
        lines += [f"| {k[4:]} | {m} | {v} |" for k, row in d.items() if k.startswith("cfg_") for m, v in row.items()]
    d = st.get("steps", {}).get("data")
    if d:
        lines += ["", f"## sampling at {d['image_px']}², {d['steps']} steps, median of {d['reps']}", "",
                  "| measure | value |", "|---|---|",
                  f"| DPIR s/step | {d['dpir_s_per_step']} |", f"| plain SD3 s/step | {d['plain_s_per_step']} |",
                  f"| DPIR / plain | {d['dpir_over_plain']}× |",
                  f"| DiT forward | {d['dit_forward_tflop']} TFLOP → {d['dit_tflops']} TFLOP/s |",
                  f"| card bf16 matmul measured | {d['card_bf16_matmul_tflops_measured']} TFLOP/s "
                  f"(DiT at {d['fraction_of_measured']}) |",
                  f"| card bf16 datasheet | {d['card_bf16_datasheet_tflops']} TFLOP/s (DiT at "
                  f"{d['fraction_of_datasheet']}) |"]
    d = st.get("pipeline", {}).get("data")
    if d:
        lines += ["", f"## pipeline {d['image_px']}², {d['steps']} steps: diffusers reference / pack end to end = "
                      f"{d['reference_over_pack']}×", "", "| stage | seconds | peak MiB | delta MiB |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.3f} | {v['peak_mib']} | {v['delta_mib']} |" for k, v in d["stages"].items()]
    d = st.get("memory", {}).get("data")
    if d:
        lines += ["", "## peak memory per stage (MiB" + (", models offloaded between stages)" if
                                                       d["offloaded_between_stages"] else ")"), ""]
        sizes = [k for k in d if k.isdigit()]
        names = list(dict.fromkeys(n.replace(" (tiled)", "") for k in sizes for n in d[k]["stages"]))
        lines += ["| stage | " + " | ".join(f"{k}²" + (" tiled" if d[k]["tiled"] else "") for k in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for n in names:
            cells = []
            for k in sizes:
                m = d[k]["stages"].get(n) or d[k]["stages"].get(n + " (tiled)")
                cells.append(f"{m['peak_mib']} ({m['seconds']:.2f} s)" if m else "–")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    d = st.get("large", {}).get("data")
    if d:
        sizes = [k for k in d if k.isdigit()]
        lines += ["", f"## dpir_restore_large, {d['tile']} px tiles, 1 step: peak MiB (seconds) per stage", "",
                  "| stage | " + " | ".join(f"{k}²" for k in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for n in dict.fromkeys(n for k in sizes for n in d[k]["stages"]):
            cells = [(lambda m: f"{m['peak_mib']} ({m['seconds']:.2f} s)" if m else "–")(d[k]["stages"].get(n))
                     for k in sizes]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("| peak | " + " | ".join(f"{d[k]['peak_mib']}" for k in sizes) + " |")
        if "peak_ratio" in d:
            lines += ["", f"peak {sizes[-1]}² / {sizes[0]}²: {d['peak_ratio']}×"]
        v = d.get("decode")
        if v:
            lines += ["", f"one-pass decode ({v['tiles']} tiles) vs VAEDecodeTiled at {v['image_px']}², tile "
                      f"{v['tile_px']} px, overlap {v['overlap_px']} px: {v['three_over_one']}× faster; vs untiled: "
                      f"one pass {v['one_pass_vs_whole']['psnr_db']} dB, three tilings "
                      f"{v['three_vs_whole']['psnr_db']} dB"]
    d = st.get("weight_dtype", {}).get("data")
    if d:
        lines += ["", f"## weight_dtype at {d['image_px']}², {d['steps']} steps", "",
                  "| weight_dtype | stored | s/step | peak MiB | model MiB | rel. L2 vs bf16 |", "|---|---|---|---|---|---|"]
        lines += [f"| {wd} | {v.get('stored_dtype', '')} | {v.get('s_per_step', '')} | {v.get('peak_mib', '')} | "
                  f"{v.get('model_size_mib', '')} | {v.get('rel_l2_vs_bf16', v.get('error', ''))} |"
                  for wd, v in d.items() if isinstance(v, dict)]
    for name in ("t5xxl", "compile"):
        d = st.get(name, {}).get("data")
        if d:
            lines += ["", f"## {name}", "", "| measure | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in d.items()]
    d = st.get("caches", {}).get("data")
    if d:
        lines += ["", f"## step caches at {d['image_px']}², {d['steps']} steps, threshold {d['reuse_threshold']}, "
                      f"median of {d['reps']}", "",
                  "| cache | steps skipped | seconds | speed ratio (uncached / cached) | PSNR vs uncached (dB) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['skipped']}/{v['steps']} | {v['seconds']} | {v['speed_ratio']}× | {v['psnr_db']} |"
                  for k, v in d["variants"].items()]
    return "\n".join(lines) + "\n"


STAGES = {"setup": stage_setup, "conformance": stage_conformance, "workflows": stage_workflows,
          "reference": stage_reference, "steps": stage_steps, "pipeline": stage_pipeline, "memory": stage_memory,
          "large": stage_large, "weight_dtype": stage_weight_dtype, "t5xxl": stage_t5xxl, "compile": stage_compile,
          "caches": stage_caches}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.md, conformance.xml")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--size", default="sd3-medium", choices=list(SIZES))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="optional stages that would end past this many seconds are skipped (default 420)")
    ap.add_argument("--steps", type=int, default=8, help="sampling steps of the checks and figures (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each timing (median; default 3)")
    ap.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages (setup always runs)")
    ap.add_argument("--skip", nargs="+", default=[], choices=list(STAGES))
    ap.add_argument("--work", default=None, help="folder for the random weights (default: the system temp)")
    ap.add_argument("--keep-weights", action="store_true", help="leave the random weights in --work at the end")
    args = ap.parse_args(argv)
    if args.only:
        args.only = ["setup"] + args.only
    suite = Suite(args)
    torch.manual_seed(0)
    with torch.inference_mode():  # as ComfyUI runs a prompt
        for name in ESSENTIAL + OPTIONAL:
            if name != "setup" and suite.results["stages"]["setup"]["status"] != "ok":
                suite.results["stages"][name] = {"status": "skipped", "reason": "setup failed"}
                continue
            suite.run(name, STAGES[name], name in ESSENTIAL)
    suite.write()
    if "base" in suite.ctx and not args.keep_weights:
        shutil.rmtree(suite.ctx["base"], ignore_errors=True)  # ~20 GB at real size
    print((suite.out / "gpu_suite.md").read_text())
    failed = [k for k, v in suite.results["stages"].items() if v.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
