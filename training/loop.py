"""The training loop both trainers run: accelerate, accumulation, clipping, EMA, checkpoints, resume."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .common import (EMA, RunConfig, StepCounter, digest, make_accelerator, make_optimizer, make_schedule,
                     resolve_resume, save_checkpoint, setup_logging)
from .data import ImageFolders, make_loader

log = logging.getLogger("dpir.training")


class TrainerBase:
    """Subclasses build their models in ``build`` and compute one micro-batch in ``compute``.

    ``build`` returns the module holding every trainable parameter (wrapped
    by accelerate: DDP, FSDP or DeepSpeed). ``compute(batch, step, micro)``
    returns ``(loss to backpropagate, dict of floats to log)``.
    """

    name = "trainer"

    def __init__(self, cfg):
        self.cfg = cfg
        self.run_cfg: RunConfig = cfg.run
        self.history: list[dict] = []

    # ---- to override
    def build(self, accelerator) -> torch.nn.Module:
        raise NotImplementedError

    def compute(self, batch: dict, step: int, micro: int):
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (validation images, extra optimizers)."""

    def export(self, out_dir) -> dict:
        raise NotImplementedError

    def extra_checkpoint_objects(self) -> list:
        return []

    # ---- shared
    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def setup(self, need_data: bool = True):
        run = self.run_cfg
        self.accelerator = acc = make_accelerator(run)
        setup_logging(acc)
        torch.manual_seed(run.seed)
        self.dataset = ImageFolders(self.cfg.data, seed=run.seed) if need_data else None
        if acc.is_main_process and need_data:
            log.info("%s: %d training images in %s (%d unreadable skipped)", self.name, len(self.dataset),
                     list(map(str, self.cfg.data.folders)), len(self.dataset.skipped))
        model = self.build(acc)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("nothing to train: no parameter requires a gradient")
        optimizer = make_optimizer(params, self.cfg.optim)
        self.schedule = make_schedule(optimizer, self.cfg.optim, run.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.counter = StepCounter()
        acc.register_for_checkpointing(self.schedule, self.counter)
        self.ema = None
        if getattr(self.cfg, "ema_decay", 0):
            self.ema = EMA([p for p in acc.unwrap_model(self.model).parameters() if p.requires_grad],
                           self.cfg.ema_decay)
            acc.register_for_checkpointing(self.ema)
        for obj in self.extra_checkpoint_objects():
            acc.register_for_checkpointing(obj)
        resume = resolve_resume(run)
        if resume is not None:
            acc.load_state(str(resume))
            self.history = json.loads((resume / "trainer.json").read_text()).get("history", [])
            log.info("resumed from %s at step %d", resume, self.counter.step)
        self._initial_digest = self.weights_digest() if run.write_rank_digests else None
        return self

    def weights_digest(self) -> str:
        return digest(p for p in self.accelerator.unwrap_model(self.model).parameters() if p.requires_grad)

    def train(self) -> list[dict]:
        if not hasattr(self, "accelerator"):
            self.setup()
        acc, run = self.accelerator, self.run_cfg
        start = self.counter.step
        accum = run.grad_accum
        loader = make_loader(self.dataset, run.batch_size, run.seed, start * accum, run.max_steps * accum,
                             acc.process_index, acc.num_processes, self.cfg.data.num_workers)
        self.model.train()
        it = iter(loader)
        t0 = time.perf_counter()
        for step in range(start, run.max_steps):
            logs: dict[str, float] = {}
            for micro in range(accum):
                batch = next(it)
                with acc.accumulate(self.model):
                    loss, parts = self.compute(batch, step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients and self.cfg.optim.grad_clip:
                        parts["grad_norm"] = float(acc.clip_grad_norm_(self.trainable_parameters(),
                                                                       self.cfg.optim.grad_clip))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + v / accum
            self.schedule.step()
            if self.ema is not None:
                self.ema.update()
            self.counter.step = step + 1
            logs = {k: _mean_across(acc, v) for k, v in logs.items()}
            logs.update(step=step + 1, lr=self.schedule.get_last_lr()[0])
            self.history.append(logs)
            if acc.is_main_process and (step + 1) % max(1, run.log_every) == 0:
                rate = (step + 1 - start) * run.batch_size * accum * acc.num_processes / (time.perf_counter() - t0)
                log.info("step %d %s (%.2f images/s)", step + 1,
                         " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "step"), rate)
            self.after_step(step + 1)
            if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0:
                save_checkpoint(acc, run, step + 1, {"history": self.history})
        acc.wait_for_everyone()
        if run.write_rank_digests:
            out = Path(run.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"digest-rank{acc.process_index}.json").write_text(json.dumps({
                "rank": acc.process_index, "world": acc.num_processes, "step": self.counter.step,
                "digest": self.weights_digest(), "initial_digest": self._initial_digest, "paths_seen": sorted(self._paths_seen)}))
        if acc.is_main_process:
            (Path(run.output_dir)).mkdir(parents=True, exist_ok=True)
            (Path(run.output_dir) / "history.json").write_text(json.dumps(self.history, indent=1))
        if run.export_at_end and run.max_steps > start:
            self.export(Path(run.output_dir) / "export")
        acc.wait_for_everyone()
        return self.history

    _paths_seen: set = set()

    def note_batch(self, batch: dict) -> None:
        if self.run_cfg.write_rank_digests:
            self._paths_seen = set(self._paths_seen) | set(batch["path"])


def _mean_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=acc.device)
    return float(acc.reduce(t, reduction="mean"))
