"""Pieces both trainers share: configuration files, accelerate, optimizer, schedule, EMA, checkpoints."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("dpir.training")


# --------------------------------------------------------------------------- configuration


def load_config_file(path) -> dict:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` strings (value parsed as YAML) into a nested dict."""
    import yaml

    d = copy.deepcopy(d)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return d


def fill_dataclass(cls, d: dict | None, where: str = ""):
    """A dataclass from nested plain values; unknown keys are errors that name the key."""
    obj = cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in (d or {}).items():
        if key not in names:
            raise ValueError(f"unknown option '{where}{key}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = fill_dataclass(type(current), value, f"{where}{key}.")
        elif isinstance(value, list) and isinstance(current, tuple):
            value = tuple(value)
        setattr(obj, key, value)
    return obj


def to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup_steps: int = 500
    schedule: str = "constant"        # constant (after warmup, the release) or cosine
    grad_clip: float = 1.0
    use_8bit_adam: bool = False        # bitsandbytes AdamW8bit (CUDA only)


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "dpir-training"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 1                # per process
    grad_accum: int = 1
    mixed_precision: str = "no"        # no | bf16 | fp16 (passed to accelerate unless `accelerate launch` set it)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    resume: str | None = None          # a checkpoint folder, or "latest"
    log_every: int = 10
    export_at_end: bool = True
    export_dtype: str = "bf16"         # fp32 | bf16 | fp16
    write_rank_digests: bool = False   # debugging of distributed runs: every process writes a digest of its weights


# --------------------------------------------------------------------------- accelerate


def make_accelerator(run: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    import os

    from accelerate.state import AcceleratorState

    # a process may run several trainers one after the other (tests, notebooks): accelerate keeps one
    # AcceleratorState per process; forget its precision settings (the process group stays)
    AcceleratorState._reset_state()
    kwargs = {}
    if not os.environ.get("ACCELERATE_MIXED_PRECISION"):
        kwargs["mixed_precision"] = run.mixed_precision
    return Accelerator(gradient_accumulation_steps=run.grad_accum,
                       project_config=ProjectConfiguration(project_dir=run.output_dir), **kwargs)


def make_optimizer(params, cfg: OptimConfig):
    params = [p for p in params if p.requires_grad]
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optim.use_8bit_adam needs bitsandbytes, which is not installed (it is CUDA-only: "
                               "`pip install bitsandbytes` on a CUDA machine), or set optim.use_8bit_adam: false") from None
        if not torch.cuda.is_available():
            raise RuntimeError("optim.use_8bit_adam: bitsandbytes' 8-bit AdamW needs a CUDA GPU; none is visible. "
                               "Set optim.use_8bit_adam: false to train with torch's AdamW")
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                   eps=cfg.eps)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)


def make_schedule(optimizer, cfg: OptimConfig, total_steps: int):
    warm = max(0, int(cfg.warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def averaged_weights(ema: "EMA | None"):
    """The EMA weights in the live parameters for the block (nothing to do without EMA), swapped back after."""
    if ema is not None:
        ema.swap()
    try:
        yield
    finally:
        if ema is not None:
            ema.swap()


class EMA:
    """Exponential moving average of some parameters (fp32 copies); checkpointable by accelerate."""

    def __init__(self, params, decay: float = 0.9999):
        self.params = [p for p in params]
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights with the averages (call again to swap back)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp.float())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, sd: dict) -> None:
        self.decay = sd["decay"]
        for s, v in zip(self.shadow, sd["shadow"]):
            s.copy_(v)


class StepCounter:
    """The global step, saved with accelerate's state."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])


def checkpoint_dirs(output_dir) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / "trainer.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(run: RunConfig) -> Path | None:
    if not run.resume:
        return None
    if run.resume == "latest":
        dirs = checkpoint_dirs(run.output_dir)
        return dirs[-1] if dirs else None
    path = Path(run.resume)
    if not (path / "trainer.json").exists():
        raise FileNotFoundError(f"'{path}' is not a training checkpoint (no trainer.json)")
    return path


def save_checkpoint(accelerator, run: RunConfig, step: int, extra: dict) -> Path:
    path = Path(run.output_dir) / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        for old in checkpoint_dirs(run.output_dir)[:-run.keep_checkpoints] if run.keep_checkpoints > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def setup_logging(accelerator) -> None:
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(level)
