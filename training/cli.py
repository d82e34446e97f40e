"""Command line of the training package (``train.py`` at the pack root calls ``main``).

    python train.py vae      --config robust_vae.yaml [--set run.max_steps=100 ...]
    python train.py dpir     --config dpir.yaml       [--set trainable=lora ...]
    python train.py degrade  INPUT.png -o OUT_DIR [--seed 0] [--config dpir.yaml]   # look at the degradations
    python train.py cache-t5 --config dpir.yaml --out t5_cache/                    # precompute caption embeddings
    python train.py export   --config dpir.yaml --checkpoint OUT/checkpoints/step-N --out exported/
    python train.py bench    [--resolution 1024] [--batch 1]   # images/s, peak GPU memory (random SD3-medium)

Every subcommand runs under ``accelerate launch`` as well (one GPU, several, several machines).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args) -> dict:
    from .common import apply_overrides, load_config_file

    base = load_config_file(args.config) if args.config else {}
    return apply_overrides(base, args.set)


def cmd_vae(args) -> int:
    from .vae_trainer import VAETrainer, vae_config_from_dict

    VAETrainer(vae_config_from_dict(_config(args))).train()
    return 0


def cmd_dpir(args) -> int:
    from .dpir_trainer import DPIRTrainer, dpir_config_from_dict

    DPIRTrainer(dpir_config_from_dict(_config(args))).train()
    return 0


def cmd_export(args) -> int:
    """Rebuild the trainer from its config, load a checkpoint, export the weights."""
    d = _config(args)
    d.setdefault("run", {})
    d["run"].update({"resume": str(args.checkpoint), "max_steps": 0, "export_at_end": False,
                     "export_dtype": args.dtype})
    if args.kind == "vae" or ("stock_vae" in d and "models" not in d):
        from .vae_trainer import VAETrainer as T, vae_config_from_dict as parse
    else:
        from .dpir_trainer import DPIRTrainer as T, dpir_config_from_dict as parse
    trainer = T(parse(d)).setup(need_data=False)
    paths = trainer.export(args.out)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return 0


def cmd_cache_t5(args) -> int:
    from .data import ImageFolders
    from .dpir_trainer import build_t5_cache, dpir_config_from_dict

    cfg = dpir_config_from_dict(_config(args))
    if not cfg.models.t5:
        print("cache-t5 needs models.t5 (the T5 encoder folder with its tokenizer)", file=sys.stderr)
        return 2
    ds = ImageFolders(cfg.data, probe=False)
    captions = [ds.caption(i) for i in range(len(ds))] + [cfg.validation.caption]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = build_t5_cache(cfg.models.t5, captions, args.out, device, dtype)
    print(f"{n} new caption embeddings in {args.out}; set models.t5_cache: {args.out} (and models.t5: null)")
    return 0


def cmd_degrade(args) -> int:
    import torch
    from PIL import Image
    import numpy as np

    from .degradation import Degrader, config_from_dict, restoration_prompt

    d = _config(args)
    cfg = config_from_dict(d.get("degradation", d if "scale" in d else {}))
    img = torch.from_numpy(np.asarray(Image.open(args.input).convert("RGB"), dtype=np.float32) / 255)
    img = img.permute(2, 0, 1)[None]
    s = cfg.scale
    img = img[:, :, : img.shape[2] // s * s, : img.shape[3] // s * s]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(args.count):
        res = Degrader(cfg)(img, seed=args.seed + k)
        arr = (res.lq[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(out / f"lq_seed{args.seed + k}.png")
        print(f"seed {args.seed + k}: {restoration_prompt(res.params[0], s)}")
        (out / f"lq_seed{args.seed + k}.json").write_text(json.dumps(res.params[0], indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train.py", description="Train DPIR's robust VAE and DPIR itself.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--config", help="YAML or JSON training config (see training/configs/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set run.max_steps=100 (repeatable)")

    common(sub.add_parser("vae", help="fine-tune the robust VAE encoder"))
    common(sub.add_parser("dpir", help="train DPIR (LQ branch + DiT, LoRA or attention)"))
    sp = sub.add_parser("export", help="export a training checkpoint to the files the nodes load")
    common(sp)
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--kind", choices=("dpir", "vae"), default=None)
    sp.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16")
    sp = sub.add_parser("cache-t5", help="precompute T5 embeddings of every caption")
    common(sp)
    sp.add_argument("--out", required=True)
    sp = sub.add_parser("degrade", help="degrade one image with the training pipeline (to check settings)")
    common(sp)
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--count", type=int, default=4)
    sp = sub.add_parser("bench", help="images/s and peak memory of a training step, random SD3-medium shape")
    sp.add_argument("--resolution", type=int, default=1024)
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--steps", type=int, default=5)
    sp.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    sp.add_argument("--trainable", choices=("full", "attention", "lq"), default="full")
    args = p.parse_args(argv)
    if args.cmd == "bench":
        from .benchmark import main as bench_main

        return bench_main(args)
    return {"vae": cmd_vae, "dpir": cmd_dpir, "export": cmd_export, "cache-t5": cmd_cache_t5,
            "degrade": cmd_degrade}[args.cmd](args)
