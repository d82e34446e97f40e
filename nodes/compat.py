"""Every ComfyUI internal the pack touches, and the one place where ComfyUI versions differ.

Run and tested on ComfyUI 0.3.64 (frontend 1.27.10). Newer ComfyUI (0.38.x, 2026) has only been READ: the
stored Comfy-Org/ComfyUI sources of several 2026 commits (comfyui_version.py 0.38.1 at 20ca544e); no complete
newer tree exists to run. ``TOUCH_POINTS`` lists each internal with what those sources showed (``CHECKED``,
``ADAPTED``, ``NOT_STORED``...); ``tests/host/test_compat_drift.py`` checks every entry against the host it runs
with, so the first run on another ComfyUI names what changed. Where versions differ, the helpers below detect
the feature (a parameter, an attribute, an argparse option, a file the host reads) -- never a version number.

This module imports no ComfyUI at import time: the test harness loads it by path to choose server flags
before ComfyUI exists in the process. ComfyUI modules are imported inside the helpers that need them.
"""
from __future__ import annotations

import ast
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

TESTED_ON = "ComfyUI 0.3.64, frontend 1.27.10"
READ_ONLY = "ComfyUI 0.38.x sources (Comfy-Org/ComfyUI, 2026 commits), read, never run"

# status on the newer sources
CHECKED = "checked: same in the stored newer sources"
ADAPTED = "changed in the newer sources: adapted (feature-detected here)"
NOT_STORED = "not stored: unverified on newer ComfyUI"


@dataclass(frozen=True)
class TouchPoint:
    """One ComfyUI internal the pack relies on.

    kind: "attr"   -- ``target`` ("module:attr.path") must exist;
          "call"   -- it must exist and accept the keyword/positional parameter names in ``params``
                      (``absent``: parameters whose presence breaks the pack's call);
          "source" -- the host file ``target`` ("module" or "path/file.py") must contain every string in ``params``
                      (model-options / cond keys the host reads, routes, yaml names);
          "cli"    -- every option in ``params`` must be among the host's argparse options (comfy/cli_args.py).
    """
    target: str
    kind: str
    used_by: str
    status: str
    params: tuple = ()
    absent: tuple = ()
    note: str = ""


TP = TouchPoint
TOUCH_POINTS: tuple[TouchPoint, ...] = (
    # loading
    TP("comfy.sd:load_diffusion_model_state_dict", "call", "nodes/loaders.py", ADAPTED, ("sd", "model_options"),
       note="newer: disable_dynamic parameter (passed when present: load_diffusion_model_state_dict below); the "
            "dynamic ModelPatcher keeps weights in the file's dtype in RAM and casts when staging (weight_dtype)"),
    TP("comfy.model_patcher:ModelPatcher", "call", "nodes/loaders.py (LQ branch)", CHECKED,
       ("model", "load_device", "offload_device")),
    TP("comfy.model_patcher:ModelPatcher.clone", "attr", "nodes/lq_injection.py", CHECKED,
       note="changed, harmless: newer clone copies model options without deepcopy (the patch objects' "
            "__deepcopy__ = self only matters on 0.3.64); nothing the pack puts in transformer_options has .to() or "
            ".models(), which newer ComfyUI calls on patches when it moves or loads them"),
    TP("comfy.model_patcher:ModelPatcher.model_size", "attr", "tests/host/test_weight_dtype.py", CHECKED),
    TP("comfy.model_patcher:ModelPatcher.get_model_object", "attr", "nodes/lq_injection.py, nodes/sampler.py", CHECKED),
    TP("comfy.model_patcher:ModelPatcher.set_model_patch_replace", "call", "nodes/lq_injection.py", CHECKED,
       ("patch", "name", "block_name", "number")),
    TP("comfy.model_patcher:ModelPatcher.add_wrapper_with_key", "call", "nodes/lq_injection.py", CHECKED,
       ("wrapper_type", "key", "wrapper")),
    TP("comfy.model_patcher:ModelPatcher.set_additional_models", "call", "nodes/tiled_sampling.py (LQ branch loaded "
       "with the DiT for the tiles' own features)", CHECKED, ("key", "models")),
    TP("comfy.model_patcher:ModelPatcher.set_model_unet_function_wrapper", "attr", "tests/host/test_tiled.py", CHECKED),
    TP("comfy.model_patcher:ModelPatcher", "attr", "nodes/loaders.py (DPIR Model Loader)", ADAPTED,
       note="newer: cached_patcher_init (reload factory for MultiGPU deep clones and non-dynamic delegates) is set "
            "by core loaders; the pack sets it where the host's patchers have it (set_reload_factory)"),
    TP("comfy.patcher_extension:WrappersMP.OUTER_SAMPLE", "attr", "nodes/lq_injection.py", CHECKED,
       note="patcher_extension.py itself is not stored; its use in the stored samplers.py is unchanged"),
    TP("comfy.patcher_extension:WrappersMP.APPLY_MODEL", "attr", "nodes/lq_injection.py", CHECKED,
       note="BaseModel.apply_model (stored model_base.py) still runs the APPLY_MODEL wrappers with class_obj = model"),
    # core SD3 nodes on the DPIR MODEL (docs/interop.md)
    TP("comfy.patcher_extension:WrappersMP.DIFFUSION_MODEL", "attr", "nodes/dit_wrappers.py", NOT_STORED,
       note="EasyCache's hook; SD3's MMDiT (0.3.64) never runs these wrappers, the DPIR MODEL's APPLY_MODEL wrapper "
            "does. No newer mmdit.py is stored: if a newer MMDiT runs them itself, call_dit_wrappers hands its "
            "forward the options without them, so they still run once"),
    TP("comfy.patcher_extension:get_all_wrappers", "call", "nodes/dit_wrappers.py", NOT_STORED,
       ("wrapper_type", "transformer_options")),
    TP("comfy.patcher_extension:WrapperExecutor.new_class_executor", "call", "nodes/dit_wrappers.py", NOT_STORED,
       ("original", "class_obj", "wrappers")),
    TP("comfy_extras.nodes_easycache", "source", "nodes/dit_wrappers.py (EasyCache refused in tiles), bench", NOT_STORED,
       ('"easycache", easycache_forward_wrapper', "WrappersMP.DIFFUSION_MODEL", " - skipped {"),
       note="the key EasyCache registers its DIFFUSION_MODEL wrapper under; bench and tests read its "
            "'skipped k/n steps' log line"),
    TP("comfy_extras.nodes_easycache:EasyCacheNode.execute", "call", "bench (caches)", NOT_STORED,
       ("model", "reuse_threshold", "start_percent", "end_percent", "verbose")),
    TP("comfy_extras.nodes_easycache:LazyCacheNode.execute", "call", "bench (caches)", NOT_STORED,
       ("model", "reuse_threshold", "start_percent", "end_percent", "verbose")),
    TP("comfy.model_patcher:ModelPatcher.remove_wrappers_with_key", "call", "bench (caches)", NOT_STORED,
       ("wrapper_type", "key")),
    TP("comfy.model_patcher", "source", "nodes/interop.py (a merge told from a LoRA)", CHECKED,
       ("p[k] = [(weight, convert_func)]",
        "current_patches.append((strength_patch, patches[k], strength_model, offset, function))"),
       note="a model merge adds the other model's weights as a list (get_key_patches), a LoRA an adapter object; "
            "the merge nodes clone model1 and take no model options of model2"),
    TP("comfy.diffusers_convert:convert_vae_state_dict", "call", "nodes/loaders.py", CHECKED, ("vae_state_dict",)),
    TP("comfy.sd:VAE", "call", "nodes/loaders.py, bench, tests", CHECKED, ("sd",)),
    TP("comfy.sd:VAE.throw_exception_if_invalid", "attr", "nodes/loaders.py", CHECKED),
    TP("comfy.sd:VAE.get_sd", "attr", "nodes/loaders.py", CHECKED),
    TP("comfy.clip_vision:load_clipvision_from_sd", "call", "nodes/loaders.py", CHECKED, ("sd",)),
    TP("comfy.clip_vision:convert_to_transformers", "call", "nodes/loaders.py", CHECKED, ("sd", "prefix")),
    TP("comfy.clip_vision:ClipVisionModel", "call", "nodes/loaders.py", CHECKED, ("json_config",),
       note="newer also takes a dict and fast_disk; load_sd assigns under the dynamic patcher"),
    TP("comfy.clip_vision:ClipVisionModel.load_sd", "call", "nodes/loaders.py", CHECKED, ("sd",)),
    TP("comfy.clip_vision:ClipVisionModel.encode_image", "call", "nodes/visual_prompt.py", CHECKED, ("image", "crop"),
       note="outputs last_hidden_state / image_embeds unchanged; its clip_preprocess moved to comfy.clip_model "
            "(comfy.clip_vision.clip_preprocess kept as an alias); the pack never calls clip_preprocess itself"),
    TP("comfy.model_base:SD3", "attr", "nodes/checks.py", CHECKED),
    TP("comfy.model_base:BaseModel.get_dtype", "attr", "nodes/lq_injection.py", CHECKED),
    TP("comfy.model_base:BaseModel.process_latent_in", "attr", "nodes/lq_injection.py (latent_format.process_in)",
       CHECKED),
    TP("comfy.ldm.modules.diffusionmodules.mmdit", "source", "nodes/lq_injection.py, nodes/checks.py", NOT_STORED,
       ("patches_replace", "double_block", "original_block", "x_embedder", "context_embedder", "y_embedder",
        "pos_embed_max_size"),
       note="the double_block 0 replace patch and the MMDiT attributes the checks read; newer DiTs run blocks in "
            "per-block prefetch scopes (comfy/model_prefetch.py) -- needs a GPU run on a current ComfyUI"),
    TP("comfy.model_sampling:ModelSamplingDiscreteFlow.percent_to_sigma", "attr", "nodes/lq_injection.py", CHECKED),
    # sampling
    TP("comfy.samplers:CFGGuider", "call", "nodes/sampler.py, bench", CHECKED, ("model_patcher",)),
    TP("comfy.samplers:CFGGuider.set_conds", "call", "nodes/sampler.py", CHECKED, ("positive", "negative")),
    TP("comfy.samplers:CFGGuider.set_cfg", "call", "nodes/sampler.py", CHECKED, ("cfg",)),
    TP("comfy.samplers:CFGGuider.sample", "call", "tests, bench", CHECKED,
       ("noise", "latent_image", "sampler", "sigmas", "seed")),
    TP("comfy.samplers:calc_cond_batch", "call", "nodes/tiled_sampling.py", CHECKED,
       ("model", "conds", "x_in", "timestep", "model_options")),
    TP("comfy.samplers:calculate_sigmas", "call", "nodes/sampler.py, bench", CHECKED,
       ("model_sampling", "scheduler_name", "steps")),
    TP("comfy.samplers:sampler_object", "call", "nodes/sampler.py, bench", CHECKED, ("name",)),
    TP("comfy.samplers:SAMPLER_NAMES", "attr", "nodes/sampler.py", CHECKED),
    TP("comfy.samplers:SCHEDULER_NAMES", "attr", "nodes/sampler.py", CHECKED),
    TP("comfy.samplers", "source", "nodes/tiled_sampling.py, nodes/lq_injection.py", CHECKED,
       ("sampler_calc_cond_batch_function", "sample_sigmas", '"sigmas"', '"conds"', '"input"', '"sigma"',
        '"model_options"', "transformer_options", "model_conds"),
       note="model-options keys the pack sets or reads: the cond-batch hook and its args, the sigmas the patch "
            "reads from transformer_options"),
    TP("comfy.model_patcher:ModelPatcher.set_model_sampler_post_cfg_function", "call",
       "nodes/lq_injection.py (restoration guidance)", CHECKED, ("post_cfg_function",),
       note="core SUPIRApply (stored comfy_extras/nodes_model_patch.py) registers its restore_cfg the same way"),
    TP("comfy.samplers", "source", "nodes/lq_injection.py (restoration guidance)", CHECKED,
       ("sampler_post_cfg_function", '"denoised"', '"sigma"', '"model_options"', "sample_sigmas"),
       note="cfg_function calls each post-CFG function with {denoised, sigma, model_options, ...} and uses what it "
            "returns; CFGGuider.inner_sample puts the schedule into transformer_options['sample_sigmas']"),
    TP("comfy.model_sampling:ModelSamplingDiscreteFlow.sigma_max", "attr", "nodes/lq_injection.py (strength "
       "schedule)", CHECKED),
    TP("comfy.sample:prepare_noise", "call", "tests, bench", NOT_STORED, ("latent_image", "seed")),
    TP("comfy.sample:sample", "attr", "tests/host/test_conformance.py", NOT_STORED),
    TP("comfy_extras.nodes_model_advanced:ModelSamplingSD3.patch", "call", "nodes/sampler.py", CHECKED,
       ("model", "shift")),
    TP("comfy_extras.nodes_torch_compile:TorchCompileModel.execute", "call", "tests/host/test_compile.py, bench",
       NOT_STORED, ("model", "backend"), note="the core V3 node called directly (its NodeOutput.result)"),
    TP("comfy.conds:CONDRegular", "attr", "nodes/lq_injection.py, nodes/tiled_sampling.py", NOT_STORED,
       note="the pack subclasses it (process_cond, _copy_with); its use in the stored model_base.py is unchanged"),
    TP("comfy.conds:CONDRegular._copy_with", "call", "nodes/lq_injection.py", NOT_STORED, ("cond",)),
    TP("comfy.conds:CONDNoiseShape.process_cond", "call", "nodes/lq_injection.py", NOT_STORED,
       ("batch_size", "area")),
    TP("comfy.conds:CONDCrossAttn", "attr", "nodes/tiled_sampling.py", NOT_STORED),
    TP("comfy.sd1_clip", "source", "nodes/text_prompt.py", CHECKED, ("_min_length",),
       note="the tokenizer option t5xxl_min_length (256-token T5 padding)"),
    TP("comfy.text_encoders.sd3_clip", "source", "nodes/text_prompt.py, nodes/caption.py (t5_tokenizer folder)",
       NOT_STORED, ("t5xxl",),
       note="cond_stage_model.t5xxl of a T5-only SD3 CLIP"),
    # utilities
    TP("comfy.utils:common_upscale", "call", "nodes/robust_encode.py", CHECKED,
       ("samples", "width", "height", "upscale_method", "crop")),
    TP("comfy.utils:repeat_to_batch_size", "call", "nodes/lq_injection.py, nodes/tiled_sampling.py", CHECKED,
       ("tensor", "batch_size")),
    TP("comfy.utils:ProgressBar", "call", "nodes/tiled_sampling.py", CHECKED, ("total",)),
    TP("comfy.utils:load_torch_file", "call", "tests, bench", CHECKED, ("ckpt",)),
    TP("comfy.model_management:get_torch_device", "attr", "nodes/loaders.py", CHECKED),
    TP("comfy.model_management:unet_offload_device", "attr", "nodes/loaders.py", CHECKED),
    TP("comfy.model_management:load_models_gpu", "call", "nodes/lq_injection.py", CHECKED, ("models",)),
    TP("comfy.model_management:intermediate_device", "attr", "nodes/lq_injection.py (tile feature cache)", CHECKED,
       note="CPU unless --gpu-only, in both"),
    TP("comfy.model_management:throw_exception_if_processing_interrupted", "attr",
       "nodes/tiled_sampling.py, nodes/visual_prompt.py", CHECKED),
    TP("comfy.model_management:interrupt_current_processing", "attr", "tests/host/test_tiled.py", CHECKED),
    TP("comfy.model_management:InterruptProcessingException", "attr", "tests/host/test_tiled.py", CHECKED),
    TP("comfy.model_management:unload_all_models", "attr", "bench", CHECKED),
    TP("comfy.ldm.modules.attention", "source", "nodes/cpu_attention.py", CHECKED,
       ('"optimized_attention_override" in transformer_options', "def attention_sub_quad("),
       note="the model option every wrapped attention call consults, called as override(func, *args, **kwargs); "
            "newer also hands over tensors taken out of its AttentionTensorContainers"),
    TP("comfy.ldm.modules.diffusionmodules.mmdit", "source", "nodes/cpu_attention.py", NOT_STORED,
       ("transformer_options=transformer_options",),
       note="SD3's joint attention passes the model's transformer_options to the attention call"),
    TP("comfy.model_management:get_free_memory", "call", "nodes/tiled_vae.py, nodes/visual_prompt.py", NOT_STORED,
       ("dev",), note="VRAM on CUDA, RAM on the CPU: the tiled VAE's whole-image/tile choice and the tower batches"),
    TP("comfy.sd", "source", "nodes/tiled_vae.py", CHECKED,
       ("memory_used_encode", "memory_used_decode", "vae_dtype", "downscale_ratio", "self.patcher"),
       note="VAE attributes set per model in VAE.__init__ (not class attributes): ComfyUI's own memory estimates "
            "for a shape, which the one-pass tiled VAE compares with the free memory"),
    TP("comfy.clip_vision", "source", "nodes/visual_prompt.py", NOT_STORED, ("self.load_device",),
       note="the tower's device, whose free memory sizes the per-tile prompt batches"),
    TP("nodes:VAEDecodeTiled", "attr", "bench (one-pass vs three tilings)", NOT_STORED,
       note="what the large workflow used before DPIR VAE Decode; the bench compares against it"),
    # the caption model (nodes/caption.py): its own ModelPatcher, loaded whole, taken off the GPU after use
    TP("comfy.model_management:load_models_gpu", "call", "nodes/caption.py", CHECKED, ("models", "force_full_load")),
    TP("comfy.model_management:current_loaded_models", "attr", "nodes/caption.py (offload after captioning)",
       CHECKED),
    TP("comfy.model_management:LoadedModel.model_unload", "attr", "nodes/caption.py", CHECKED),
    TP("comfy.model_management:text_encoder_offload_device", "attr", "nodes/caption.py", CHECKED),
    TP("comfy.model_management:should_use_bf16", "call", "nodes/caption.py", CHECKED,
       ("device", "prioritize_performance")),
    TP("comfy.model_management:should_use_fp16", "call", "nodes/caption.py", CHECKED,
       ("device", "prioritize_performance")),
    TP("comfy.model_management:soft_empty_cache", "attr", "bench", CHECKED),
    TP("comfy.model_detection:detect_unet_config", "call", "tests/test_tiny_models.py", CHECKED,
       ("state_dict", "key_prefix")),
    TP("comfy.model_detection:convert_diffusers_mmdit", "call", "tests/test_tiny_models.py", CHECKED,
       ("state_dict", "output_prefix")),
    # folders, server, start-up
    TP("folder_paths:models_dir", "attr", "nodes/model_files.py", CHECKED),
    TP("folder_paths:folder_names_and_paths", "attr", "nodes/model_files.py", CHECKED),
    TP("folder_paths:get_folder_paths", "call", "nodes/model_files.py, nodes/text_prompt.py", CHECKED,
       ("folder_name",)),
    TP("folder_paths:add_model_folder_path", "call", "tests/host/test_conformance.py", CHECKED,
       ("folder_name", "full_folder_path")),
    TP("folder_paths:get_filename_list", "call", "nodes/downloads.py (the hash route hashes only names the core "
       "loaders list)", CHECKED, ("folder_name",)),
    TP("folder_paths:get_temp_directory", "attr", "nodes/web_ui.py", CHECKED),
    TP("folder_paths:get_save_image_path", "call", "nodes/web_ui.py", CHECKED,
       ("filename_prefix", "output_dir", "image_width", "image_height")),
    TP("server", "source", "nodes/web_ui.py", CHECKED, ("PromptServer.instance = self", "self.routes = routes"),
       note="custom routes on PromptServer.instance.routes while the pack is imported (GET /dpir/model_files)"),
    TP("main", "source", "nodes/model_files.py (messages), cli.py", ADAPTED, ("extra_model_paths.yaml",),
       note="newer reads extra_paths.yaml first (extra_model_paths.yaml only without it): path_configs / "
            "path_config_name below; cli.py still loads the host's extra_model_paths.yaml itself (issue 15 rewrites "
            "it to start ComfyUI, which reads its own)"),
    TP("folder_paths", "source", "cli.py (which custom_nodes a started ComfyUI loads)", CHECKED,
       ("args.base_directory", 'os.path.join(base_path, "custom_nodes")'),
       note="--base-directory moves custom_nodes: ComfyUI then loads the base directory's, not its own "
            "(custom_node_roots below)"),
    TP("utils/extra_config.py", "source", "cli.py (custom_nodes entries of extra-paths YAML files)", CHECKED,
       ("base_path", 'split("\\n")', "os.path.join(yaml_dir"),
       note="how a YAML entry's folder is resolved (_yaml_custom_nodes below follows it; newer moved the loop into "
            "_extra_paths, same rules)"),
    TP("comfy/cli_args.py", "cli", "tests/host/comfy_harness.py, tests/host/conftest.py, bench, cli.py", ADAPTED,
       ("--cpu", "--listen", "--port", "--base-directory", "--database-url", "--disable-auto-launch",
        "--disable-all-custom-nodes", "--whitelist-custom-nodes", "--extra-model-paths-config"),
       note="--disable-api-nodes is a deprecated alias of --offline in newer ComfyUI: no_api_nodes_flags below"),
    TP("comfy.cli_args:args", "attr", "nodes/downloads.py (--enable-cors-header: an origin the user allowed may "
       "use the POST routes)", CHECKED, note="read with getattr; without the option only same-origin requests pass"),
    TP("comfy/cli_args.py", "cli", "nodes/downloads.py", CHECKED, ("--enable-cors-header",)),
    TP("comfy.options:enable_args_parsing", "attr", "tests/host/conftest.py, bench, cli.py", CHECKED),
    TP("execution:PromptExecutor", "call", "bench/gpu_suite.py (in-process workflows)", ADAPTED, ("server",),
       note="newer: cache_args (execute_async reads cache_args['ram'] / ['ram_inactive']) and asset_manager; "
            "prompt_executor below passes them where the signature has them. cli.py drives ComfyUI over HTTP"),
    TP("execution:validate_prompt", "call", "bench/gpu_suite.py", CHECKED, ("prompt_id", "prompt", "partial_execution_list")),
    )
del TP


# ------------------------------------------------------------------ helpers for what differs between versions

def host_root() -> Path:
    """The folder of the ComfyUI this process runs in (only inside ComfyUI)."""
    import folder_paths

    return Path(folder_paths.__file__).resolve().parent


def cli_options(comfy_root: Path | str) -> frozenset[str]:
    """The long options a ComfyUI accepts, read from its comfy/cli_args.py without importing it
    (importing it parses sys.argv)."""
    tree = ast.parse((Path(comfy_root) / "comfy" / "cli_args.py").read_text(encoding="utf-8"))
    return frozenset(node.value for call in ast.walk(tree)
                     if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add_argument"
                     for node in call.args if isinstance(node, ast.Constant) and isinstance(node.value, str)
                     and node.value.startswith("--"))


def no_api_nodes_flags(comfy_root: Path | str) -> list[str]:
    """The flag that keeps a headless ComfyUI from loading its API nodes: ``--offline`` where the host has it
    (``--disable-api-nodes`` is its deprecated alias there), else ``--disable-api-nodes``."""
    options = cli_options(comfy_root)
    return [next(f for f in ("--offline", "--disable-api-nodes") if f in options)] \
        if options & {"--offline", "--disable-api-nodes"} else []


def path_config_name(comfy_root: Path | str | None = None) -> str:
    """The extra-paths YAML a ComfyUI reads from its own folder: extra_paths.yaml where its main.py reads it."""
    root = Path(comfy_root) if comfy_root is not None else host_root()
    try:
        main = (root / "main.py").read_text(encoding="utf-8")
    except OSError:
        return "extra_model_paths.yaml"
    return "extra_paths.yaml" if "extra_paths.yaml" in main else "extra_model_paths.yaml"


def path_configs(comfy_root: Path | str) -> list[Path]:
    """The extra-paths YAML files a ComfyUI loads at start-up from its own folder, in the order main.py does:
    extra_paths.yaml, or (without it, or on a host that does not know it) extra_model_paths.yaml."""
    root = Path(comfy_root)
    preferred = root / path_config_name(root)
    legacy = root / "extra_model_paths.yaml"
    return [p for p in (preferred if preferred.is_file() else legacy,) if p.is_file()]


def custom_node_roots(comfy_root: Path | str, base_directory: Path | str | None = None,
                      extra_configs: tuple = ()) -> list[Path]:
    """The folders a ComfyUI started with ``--base-directory base_directory`` and ``--extra-model-paths-config
    extra_configs`` loads custom node packs from: its ``custom_nodes`` (under the base directory where the host's
    folder_paths.py builds that folder from the base path, as 0.3.64 and the newer sources do: ComfyUI then
    skips its own ``custom_nodes``), then the ``custom_nodes`` entries of the extra-paths YAML files it reads (its
    own, then the given ones)."""
    root = Path(comfy_root)
    try:
        fp = (root / "folder_paths.py").read_text(encoding="utf-8")
    except OSError:
        fp = ""
    moves = "base_directory" in fp and 'os.path.join(base_path, "custom_nodes")' in fp
    roots = [(Path(base_directory) if base_directory is not None and moves else root) / "custom_nodes"]
    for cfg in (*path_configs(root), *map(Path, extra_configs)):
        roots += _yaml_custom_nodes(cfg)
    return roots


def _yaml_custom_nodes(cfg: Path) -> list[Path]:
    """The ``custom_nodes`` folders of one extra-paths YAML, resolved as utils/extra_config.py does."""
    try:
        import yaml  # a ComfyUI requirement

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except Exception:  # unreadable or not YAML: ComfyUI reports it itself
        return []
    out, here = [], Path(os.path.abspath(cfg)).parent
    for conf in data.values() if isinstance(data, dict) else ():
        if not isinstance(conf, dict) or not isinstance(conf.get("custom_nodes"), str):
            continue
        base = conf.get("base_path")
        base = Path(os.path.expandvars(os.path.expanduser(base))) if isinstance(base, str) else None
        if base is not None and not base.is_absolute():
            base = here / base
        for line in filter(None, conf["custom_nodes"].split("\n")):
            out.append(Path(os.path.normpath((base or here) / line)))
    return out


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load_diffusion_model_state_dict(sd: dict, model_options: dict, disable_dynamic: bool = False):
    """``comfy.sd.load_diffusion_model_state_dict``; ``disable_dynamic`` reaches hosts that have dynamic VRAM
    (a classic ModelPatcher is asked for, as core loaders do for non-dynamic delegates)."""
    import comfy.sd

    kwargs = {"disable_dynamic": True} if disable_dynamic and _accepts(comfy.sd.load_diffusion_model_state_dict,
                                                                         "disable_dynamic") else {}
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options=model_options, **kwargs)


def set_reload_factory(patcher, factory, args: tuple, index: int | None = None) -> bool:
    """Set ``cached_patcher_init`` as core loaders do (``(factory, args[, index])``; ComfyUI calls
    ``factory(*args)`` or ``factory(*args, disable_dynamic=True)`` and takes ``[index]`` of the result) where the
    host's ModelPatcher has it: MultiGPU deep clones and hooked conditioning on a dynamic patcher reload the
    model through it. False on hosts without it."""
    if not hasattr(patcher, "cached_patcher_init"):
        return False
    patcher.cached_patcher_init = (factory, args) if index is None else (factory, args, index)
    return True


def is_dynamic(patcher) -> bool:
    """True for newer ComfyUI's dynamic-VRAM ModelPatcher (weights stay in the file's dtype in RAM)."""
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def staged_dtype(module, name: str = "weight"):
    """The dtype a module's parameter is stored in for computing: under the dynamic patcher the dtype ComfyUI
    archived when it built the model (``<name>_comfy_model_dtype``: cast to when staged), else the tensor's."""
    archived = getattr(module, f"{name}_comfy_model_dtype", None)
    return archived if archived is not None else getattr(module, name).dtype


def prompt_executor(server):
    """ComfyUI's in-process executor with the classic cache, built with the arguments this host's signature takes:
    newer hosts read cache_args['ram'] / ['ram_inactive'] (and take an asset_manager), 0.3.64 knows neither."""
    import execution

    params = inspect.signature(execution.PromptExecutor).parameters
    kwargs = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in params:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    if "asset_manager" in params:
        from types import SimpleNamespace

        kwargs["asset_manager"] = SimpleNamespace(enabled=False)
    return execution.PromptExecutor(server, **kwargs)
