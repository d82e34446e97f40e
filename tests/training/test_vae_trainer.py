"""Robust VAE encoder fine-tuning on tiny models: the loss falls, only the encoder moves, exports load."""
import time

import pytest
import torch

from training_helpers import FAST_DEGRADATION, decoder_photos
from dpir_pack.models.checkpoints import load_vae
from dpir_pack.training.losses import PerceptualLoss
from dpir_pack.training.vae_trainer import VAETrainer, vae_config_from_dict


@pytest.fixture(scope="module")
def vae_run(tiny_files, tmp_path_factory):
    photos = decoder_photos(tmp_path_factory.mktemp("decoder_photos"))
    out = tmp_path_factory.mktemp("vae_run")
    cfg = vae_config_from_dict({
        "stock_vae": str(tiny_files["stock_vae"]), "init_encoder": str(tiny_files["robust_vae"]),
        "data": {"folders": [str(photos)], "crop_size": 32, "resolutions": ["native"], "random_flip": False},
        "degradation": FAST_DEGRADATION,
        "run": {"output_dir": str(out), "max_steps": 60, "batch_size": 4, "checkpoint_every": 30,
                "log_every": 1000, "export_dtype": "fp32"},
        "optim": {"lr": 2e-3, "warmup_steps": 0, "weight_decay": 0.0},
        "perceptual": {"backbone": "alexnet", "random_init": True},
        "disc": {"start_step": 30, "width": 16, "layers": 2},   # L1 + LPIPS, then + the patch discriminator
    })
    trainer = VAETrainer(cfg)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.robust_vae().state_dict().items()}
    t0 = time.perf_counter()
    history = trainer.train()
    return {"trainer": trainer, "history": history, "out": out, "before": before, "cfg": cfg,
            "seconds": time.perf_counter() - t0}


def test_sixty_steps_halve_the_loss(vae_run):
    h = vae_run["history"]
    losses = [x["loss"] for x in h]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"VAE loss (L1 + LPIPS): first 5 steps {first:.3f}, last 5 steps {last:.3f} (x{last / first:.2f}); "
          f"60 steps in {vae_run['seconds']:.1f} s")
    assert last <= 0.5 * first
    assert "g_loss" not in h[29] and "g_loss" in h[30] and "d_loss" in h[30]  # the GAN phase starts at step 30


def test_only_the_encoder_moves(vae_run):
    after = vae_run["trainer"].robust_vae().state_dict()
    changed = {k for k, v in vae_run["before"].items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(("encoder.", "quant_conv.")) for k in changed)


def test_export_loads_through_the_pack_loader(vae_run):
    from diffusers import AutoencoderKL

    vae = vae_run["trainer"].robust_vae().eval()
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
    for path in (vae_run["out"] / "export" / "robust_vae", vae_run["out"] / "export" / "dpir_robust_vae.safetensors"):
        ckpt = load_vae(path)
        assert ckpt.has_decoder
        loaded = AutoencoderKL.from_config(ckpt.config)
        loaded.load_state_dict(ckpt.state_dict)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval().encode(x).latent_dist.mode(), ref)


def test_resume_is_exact(vae_run, tmp_path):
    import dataclasses

    cfg = vae_run["cfg"]
    cfg2 = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path), export_at_end=False,
                                                             checkpoint_every=0,
                                                             resume=str(vae_run["out"] / "checkpoints" / "step-30")))
    resumed = VAETrainer(cfg2)
    resumed.train()
    a, b = vae_run["trainer"].robust_vae().state_dict(), resumed.robust_vae().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_perceptual_loss_needs_weights(tmp_path):
    import torchvision

    with pytest.raises(ValueError, match="cannot be downloaded"):
        PerceptualLoss("vgg16")
    # a user file: torchvision's state dict layout (random values here)
    net = torchvision.models.alexnet(weights=None)
    torch.save(net.state_dict(), tmp_path / "alexnet.pth")
    loss = PerceptualLoss("alexnet", weights=str(tmp_path / "alexnet.pth"))
    torch.testing.assert_close(loss.features[0].weight, net.features[0].weight)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    d = loss(x, x.flip(-1))
    assert d.shape == (2,) and torch.all(d > 0) and torch.all(loss(x, x) == 0)
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "bad_lin.pth")
    with pytest.raises(ValueError, match="LPIPS"):
        PerceptualLoss("alexnet", weights=str(tmp_path / "alexnet.pth"), lin_weights=str(tmp_path / "bad_lin.pth"))
