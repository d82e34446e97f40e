"""Options of the DPIR trainer: gradient checkpointing, bf16, EMA, restoration prompts, the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training_helpers import dpir_config
from dpir_pack.training.common import EMA
from dpir_pack.training.dpir_trainer import DPIRTrainer, dpir_config_from_dict

ROOT = Path(__file__).resolve().parents[2]


def grads(trainer, batch_inputs):
    den = trainer.accelerator.unwrap_model(trainer.model)
    den.zero_grad(set_to_none=True)
    out = den(*batch_inputs)
    out.square().mean().backward()
    return {k: p.grad.clone() for k, p in den.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_files, tiny_images, tmp_path):
    """Block 0 is re-run in backward: the LQ hook must add the same features again."""
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 16, 4, 4, generator=g), torch.tensor([300.0, 700.0]), torch.randn(2, 333, 64, generator=g),
              torch.randn(2, 64, generator=g), torch.randn(2, 16, 4, 4, generator=g))
    result = []
    for ckpt in (False, True):
        t = DPIRTrainer(dpir_config_from_dict(dpir_config(tiny_files, tiny_images, tmp_path / str(ckpt),
                                                          gradient_checkpointing=ckpt))).setup()
        den = t.accelerator.unwrap_model(t.model).train()
        assert den.transformer.gradient_checkpointing is ckpt
        result.append(grads(t, inputs))
    plain, checkpointed = result
    assert plain.keys() == checkpointed.keys() and any(k.startswith("lq_branch.") for k in plain)
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-4, atol=1e-6)


def test_bf16_lora_steps(tiny_files, tiny_images, tmp_path):
    d = dpir_config(tiny_files, tiny_images, tmp_path, trainable="lora", lora={"rank": 4, "alpha": 4})
    d["run"].update(max_steps=2, batch_size=2, mixed_precision="bf16")
    t = DPIRTrainer(dpir_config_from_dict(d))
    history = t.train()
    den = t.accelerator.unwrap_model(t.model)
    frozen = {p.dtype for p in den.transformer.parameters() if not p.requires_grad}
    trained = {p.dtype for p in den.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert t.stock_vae.dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_ema():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.5))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.5))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.ones(3))
    other = EMA([torch.nn.Parameter(torch.zeros(3))], decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and torch.equal(other.shadow[0], ema.shadow[0])


def test_restoration_prompts_change_the_t5_prompt(tiny_files, tiny_images, tmp_path):
    from dpir_pack.training.data import make_loader

    d = dpir_config(tiny_files, tiny_images, tmp_path, caption_dropout_visual=0.0, caption_dropout_text=0.0)
    plain = DPIRTrainer(dpir_config_from_dict(d)).setup()
    spire = DPIRTrainer(dpir_config_from_dict({**d, "restoration_prompts": True})).setup()
    batch = next(iter(make_loader(plain.dataset, 2, 0, 0, 1)))
    seed_of = lambda what: len(what)  # noqa: E731
    ctx_plain = plain.conditions(batch, seed_of)[2]
    ctx_spire = spire.conditions(batch, seed_of)[2]
    torch.testing.assert_close(ctx_plain[:, :77], ctx_spire[:, :77])       # same visual prompt
    assert (ctx_plain[:, 77:] - ctx_spire[:, 77:]).abs().max() > 1e-4     # other T5 prompt


def test_cli_degrade_and_help(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 80, 40)).save(tmp_path / "in.png")
    cfg = tmp_path / "d.json"
    cfg.write_text(json.dumps({"degradation": {"scale": 2, "jpeg_backend": "pil"}}))
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "degrade", str(tmp_path / "in.png"), "-o",
                          str(tmp_path / "out"), "--count", "2", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert Image.open(tmp_path / "out" / "lq_seed0.png").size == (32, 24)
    assert "seed 1:" in res.stdout
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "cache-t5" in res.stdout


def test_step_benchmark_runs_on_a_small_shape():
    from dpir_pack.training.benchmark import bench

    small = {"sample_size": 32, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 64,
             "num_attention_heads": 2, "joint_attention_dim": 64, "caption_projection_dim": 128,
             "pooled_projection_dim": 64, "out_channels": 16, "pos_embed_max_size": 32}
    for ckpt in (True,):
        r = bench(resolution=64, batch=1, steps=1, warmup=1, checkpointing=ckpt, config=small, device="cpu")
        assert r["images_per_s"] > 0 and r["gradient_checkpointing"] is ckpt and r["params_trained_M"] > 0
