"""DPIR trainer on tiny models: the loss falls, resume is exact, exports load through models/checkpoints.py."""
import json
import time
import zlib

import pytest
import torch

from training_helpers import dpir_config, write_images
from dpir_pack.models.checkpoints import load_transformer
from dpir_pack.models.lq_condition import LQCondition
from dpir_pack.models.restore import LQHook
from dpir_pack.training.dpir_trainer import (DPIRTrainer, TextPrompts, build_t5_cache, caption_key,
                                             dpir_config_from_dict)

# 4 fixed 32-px photos (crop = photo), posterior mode: a small overfitting problem
OVERFIT = {"data": {"crop_size": 32, "resolutions": ["native"], "random_flip": False},
           "hq_posterior": "mode", "optim": {"lr": 2e-3, "warmup_steps": 5, "weight_decay": 0.0}}


def trainable_state(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def run60(tiny_files, tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpir_run60")
    d = dpir_config(tiny_files, tiny_images, out, **OVERFIT)
    d["data"]["folders"] = [str(tiny_images)]
    d["run"].update(checkpoint_every=30, export_at_end=True)
    trainer = DPIRTrainer(dpir_config_from_dict(d))
    t0 = time.perf_counter()
    history = trainer.train()
    return {"trainer": trainer, "history": history, "out": out, "config": d, "seconds": time.perf_counter() - t0}


def test_sixty_steps_halve_the_loss(run60):
    losses = [h["loss"] for h in run60["history"]]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"DPIR loss: first 5 steps {first:.3f}, last 5 steps {last:.3f} (x{last / first:.2f}); "
          f"60 steps in {run60['seconds']:.1f} s")
    assert last <= 0.5 * first


def test_resume_after_step_30_gives_the_same_weights(run60, tmp_path):
    ckpt = run60["out"] / "checkpoints" / "step-30"
    assert (ckpt / "trainer.json").is_file()
    d = json.loads(json.dumps(run60["config"]))
    d["run"].update(output_dir=str(tmp_path), resume=str(ckpt), checkpoint_every=0, export_at_end=False)
    resumed = DPIRTrainer(dpir_config_from_dict(d))
    resumed.setup()
    assert resumed.counter.step == 30
    history = resumed.train()
    assert [h["step"] for h in history] == list(range(1, 61))
    a, b = trainable_state(run60["trainer"]), trainable_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in history] == [h["loss"] for h in run60["history"]]


def denoiser_inputs(trainer, seed=0):
    g = torch.Generator().manual_seed(seed)
    tr = trainer.accelerator.unwrap_model(trainer.model).transformer
    b, width = 2, tr.config.joint_attention_dim
    return (torch.randn(b, 16, 4, 6, generator=g), torch.tensor([250.0, 800.0]),
            torch.randn(b, 333, width, generator=g), torch.randn(b, tr.config.pooled_projection_dim, generator=g),
            torch.randn(b, 16, 4, 6, generator=g))


def loaded_output(path, inputs):
    from diffusers import SD3Transformer2DModel

    x, t, ctx, pooled, z_lq = inputs
    ckpt = load_transformer(path)
    model = SD3Transformer2DModel.from_config(ckpt.config)
    model.load_state_dict(ckpt.state_dict)
    branch = LQCondition.from_state_dict(ckpt.lq_state_dict).eval()
    hook = LQHook(model.eval())
    hook.features = branch.features(z_lq)
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                     return_dict=False)[0]


def trainer_output(trainer, inputs):
    den = trainer.accelerator.unwrap_model(trainer.model)
    den.eval()
    try:
        with torch.no_grad():
            return den(*inputs)
    finally:
        den.release()
        den.train()


def test_exports_load_through_the_pack_loaders(run60):
    export = run60["out"] / "export"
    inputs = denoiser_inputs(run60["trainer"])
    ref = trainer_output(run60["trainer"], inputs)
    for path in (export / "transformer", export / "dpir_transformer.safetensors"):
        out = loaded_output(path, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the exported weights are the trained ones, not the initial ones
    init = loaded_output(run60["config"]["models"]["transformer"], inputs)
    assert (init - ref).abs().max() > 1e-3


@pytest.mark.parametrize("trainable", ["lora", "attention"])
def test_lora_and_attention_sets(trainable, tiny_files, tmp_path):
    photos = write_images(tmp_path / "photos", n=3, size=[(64, 64), (48, 64), (64, 96)])
    d = dpir_config(tiny_files, photos, tmp_path / "run", trainable=trainable,
                    lora={"rank": 4, "alpha": 4, "targets": ["to_q", "to_k", "to_v", "to_out.0"]},
                    validation={"every": 2, "count": 2, "steps": 2, "size": 32})
    d["run"].update(max_steps=2, batch_size=2, export_at_end=True)
    trainer = DPIRTrainer(dpir_config_from_dict(d))
    trainer.setup()
    before = trainable_state(trainer)
    trainer.train()
    after = trainable_state(trainer)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("lq_branch.control_conv.") for k in changed)
    if trainable == "lora":
        assert changed and all(".lora_" in k or k.startswith("lq_branch.") for k in changed)
    else:
        assert any(".attn." in k for k in changed)
        assert all(".attn." in k or k.startswith("lq_branch.") for k in changed)
    # global context (photos larger than the crop), validation images and the merged export
    assert (tmp_path / "run" / "validation" / "step-0000002.png").is_file()
    inputs = denoiser_inputs(trainer)
    ref = trainer_output(trainer, inputs)
    torch.testing.assert_close(loaded_output(tmp_path / "run" / "export" / "transformer", inputs), ref,
                               rtol=1e-5, atol=1e-5)


def test_caption_dropout_and_flow_matching(tiny_files, tiny_images, tmp_path):
    d = dpir_config(tiny_files, tiny_images, tmp_path, caption_dropout_visual=1.0, caption_dropout_text=0.0)
    trainer = DPIRTrainer(dpir_config_from_dict(d)).setup()
    batch = next(iter(__import__("dpir_pack.training.data", fromlist=["make_loader"]).make_loader(
        trainer.dataset, 4, 0, 0, 1)))
    seed_of = lambda what: zlib.crc32(what.encode())  # noqa: E731
    z0, z_lq, ctx, pooled, deg = trainer.conditions(batch, seed_of)
    assert z0.shape == z_lq.shape == (4, 16, 4, 4) and ctx.shape == (4, 333, 64)
    assert torch.all(ctx[:, :77] == 0) and torch.all(pooled == 0) and ctx[:, 77:].abs().sum() > 0
    trainer.cfg.caption_dropout_visual, trainer.cfg.caption_dropout_text = 0.0, 1.0
    _, _, ctx, pooled, _ = trainer.conditions(batch, seed_of)
    assert torch.all(ctx[:, 77:] == 0) and ctx[:, :77].abs().sum() > 0 and pooled.abs().sum() > 0
    # independent drops at the configured rate
    trainer.cfg.caption_dropout_visual = trainer.cfg.caption_dropout_text = 0.464
    drops = []
    for s in range(60):
        _, _, ctx, pooled, _ = trainer.conditions(batch, lambda what, s=s: zlib.crc32(f"{what}:{s}".encode()))
        drops += [(bool(torch.all(pooled[i] == 0)), bool(torch.all(ctx[i, 77:] == 0))) for i in range(4)]
    v = sum(a for a, _ in drops) / len(drops)
    t = sum(b for _, b in drops) / len(drops)
    both = sum(a and b for a, b in drops) / len(drops)
    assert 0.35 < v < 0.58 and 0.35 < t < 0.58 and abs(both - v * t) < 0.08


def test_t5_cache_equals_the_encoder(tiny_files, tmp_path):
    from dpir_pack.models.text_prompt import load_t5_embedding
    from dpir_pack.training.dpir_trainer import ModelPaths

    captions = ["a photo number 0", "a red barn", ""]
    assert build_t5_cache(tiny_files["t5"], captions, tmp_path / "cache") == 3
    assert build_t5_cache(tiny_files["t5"], captions, tmp_path / "cache") == 0  # already there
    live = TextPrompts(ModelPaths(t5=str(tiny_files["t5"])), 64, "cpu", torch.float32)(captions)
    cached = TextPrompts(ModelPaths(t5_cache=str(tmp_path / "cache")), 64, "cpu", torch.float32)(captions)
    torch.testing.assert_close(cached, live)
    # a cache file is a T5 embedding file the nodes read
    assert load_t5_embedding(tmp_path / "cache" / f"{caption_key('a red barn')}.safetensors").shape == (1, 256, 64)
    with pytest.raises(FileNotFoundError, match="cache-t5"):
        TextPrompts(ModelPaths(t5_cache=str(tmp_path / "cache")), 64, "cpu", torch.float32)(["unknown"])


def test_config_errors(tiny_files, tiny_images, tmp_path):
    d = dpir_config(tiny_files, tiny_images, tmp_path)
    with pytest.raises(ValueError, match="unknown option 'run.max_step'"):
        dpir_config_from_dict({**d, "run": {"max_step": 3}})
    with pytest.raises(ValueError, match="trainable"):
        dpir_config_from_dict({**d, "trainable": "everything"})
    no_t5 = json.loads(json.dumps(d))
    no_t5["models"]["t5"] = None
    with pytest.raises(ValueError, match="restoration_prompts need the T5"):
        dpir_config_from_dict({**no_t5, "restoration_prompts": True})
    with pytest.raises(RuntimeError, match="bitsandbytes"):
        from dpir_pack.training.common import OptimConfig, make_optimizer

        make_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(use_8bit_adam=True))


def test_export_command_from_a_checkpoint(run60, tmp_path):
    from dpir_pack.training.cli import main

    cfg = tmp_path / "cfg.json"
    d = json.loads(json.dumps(run60["config"]))
    d["data"]["folders"] = [str(tmp_path / "photos_not_needed_for_export")]
    cfg.write_text(json.dumps(d))
    assert main(["export", "--config", str(cfg), "--checkpoint", str(run60["out"] / "checkpoints" / "step-60"),
                 "--out", str(tmp_path / "exported"), "--dtype", "fp32"]) == 0
    inputs = denoiser_inputs(run60["trainer"])
    torch.testing.assert_close(loaded_output(tmp_path / "exported" / "transformer", inputs),
                               loaded_output(run60["out"] / "export" / "transformer", inputs), rtol=0, atol=0)
