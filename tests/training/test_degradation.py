"""The Real-ESRGAN second-order degradation: deterministic per seed, inside its ranges, every stage switchable."""
import math

import pytest
import torch

from dpir_pack.training.degradation import (DegradationConfig, Degrader, blur_kernel, config_from_dict,
                                            gaussian_kernel, restoration_prompt, sinc_kernel)


def photos(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def small(**kw):
    d = {"scale": 2, "jpeg_backend": "pil", "blur1": {"kernel_sizes": [3, 9]}, "blur2": {"kernel_sizes": [3, 9]},
         "final_sinc": {"kernel_sizes": [3, 9]}}
    d.update(kw)
    return config_from_dict(d)


def test_deterministic_for_a_seed():
    x = photos()
    deg = Degrader(config_from_dict({"scale": 4}))  # the full default pipeline, kornia JPEG
    a, b, c = deg(x, seed=7), deg(x, seed=7), deg(x, seed=8)
    assert a.lq.shape == (4, 3, 8, 8) and a.lq_up.shape == x.shape
    assert torch.equal(a.lq, b.lq) and torch.equal(a.lq_up, b.lq_up) and a.params == b.params
    assert a.params != c.params and not torch.equal(a.lq, c.lq)
    # parameters are drawn on the CPU: the same numbers whatever the device, and a fresh Degrader agrees
    assert Degrader(config_from_dict({"scale": 4})).draw(4, 7) == a.params
    assert 0 <= float(a.lq.min()) and float(a.lq.max()) <= 1
    # 8-bit quantised like a saved LQ photo
    torch.testing.assert_close(a.lq * 255, (a.lq * 255).round(), atol=1e-4, rtol=0)


def test_draws_respect_their_ranges():
    cfg = config_from_dict({
        "scale": 4,
        "blur1": {"kernel_sizes": [5, 11], "sigma": [0.7, 1.3], "betag": [0.6, 2.5], "betap": [1.2, 1.8],
                  "sinc_prob": 0.3},
        "blur2": {"kernel_sizes": [7, 9], "sigma": [0.3, 0.5], "prob": 0.5},
        "resize1": {"scale": [0.4, 1.3]}, "resize2": {"scale": [0.6, 1.1]},
        "noise1": {"sigma": [3, 4], "poisson_scale": [0.2, 0.3]},
        "noise2": {"sigma": [5, 6], "poisson_scale": [0.5, 0.6], "gray_prob": 0.0},
        "jpeg1": {"quality": [41, 43]}, "jpeg2": {"quality": [70, 71]},
        "final_sinc": {"kernel_sizes": [13, 15]},
    })
    deg = Degrader(cfg)
    seen = set()
    for seed in range(60):
        for p in deg.draw(4, seed):
            for key, bc in (("blur1", cfg.blur1), ("blur2", cfg.blur2)):
                b = p[key]
                if b is None:
                    continue
                seen.add(b["kind"])
                assert b["size"] % 2 == 1 and bc.kernel_sizes[0] <= b["size"] <= bc.kernel_sizes[1]
                if b["kind"] == "sinc":
                    lo = math.pi / 3 if b["size"] < 13 else math.pi / 5
                    assert lo <= b["omega_c"] <= math.pi
                    continue
                assert bc.sigma[0] <= b["sigma_x"] <= bc.sigma[1] and bc.sigma[0] <= b["sigma_y"] <= bc.sigma[1]
                if "iso" in b["kind"] and "aniso" not in b["kind"]:
                    assert b["sigma_x"] == b["sigma_y"] and b["theta"] == 0
                if b["kind"].startswith("generalized"):
                    assert bc.betag[0] <= b["beta"] <= bc.betag[1]
                if b["kind"].startswith("plateau"):
                    assert bc.betap[0] <= b["beta"] <= bc.betap[1]
            for key, rc in (("resize1", cfg.resize1), ("resize2", cfg.resize2)):
                r = p[key]
                assert r["mode"] in rc.modes
                assert {"up": 1 <= r["scale"] <= rc.scale[1], "down": rc.scale[0] <= r["scale"] <= 1,
                        "keep": r["scale"] == 1}[r["direction"]]
            for key, nc in (("noise1", cfg.noise1), ("noise2", cfg.noise2)):
                n = p[key]
                if n["kind"] == "gaussian":
                    assert nc.sigma[0] <= n["sigma"] <= nc.sigma[1]
                else:
                    assert nc.poisson_scale[0] <= n["scale"] <= nc.poisson_scale[1]
            assert p["noise2"]["gray"] is False
            assert 41 <= p["jpeg1"] <= 43 and 70 <= p["jpeg2"] <= 71
            if p["final_sinc"] is not None:
                assert 13 <= p["final_sinc"]["size"] <= 15 and math.pi / 3 <= p["final_sinc"]["omega_c"] <= math.pi
    assert seen == {"iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc"}


def test_noise_strength_matches_its_range():
    cfg = small(scale=1, quantize=False, noise1={"gaussian_prob": 1.0, "sigma": [12, 12], "gray_prob": 0.0})
    cfg = cfg.only("noise1")
    x = torch.full((2, 3, 64, 64), 0.5)
    out = Degrader(cfg)(x, seed=3)
    assert abs(float((out.lq - x).std()) - 12 / 255) < 0.1 * 12 / 255
    grey = Degrader(small(scale=1, quantize=False,
                          noise1={"gaussian_prob": 1.0, "sigma": [12, 12], "gray_prob": 1.0}).only("noise1"))(x, seed=3)
    d = grey.lq - x
    assert torch.equal(d[:, 0], d[:, 1]) and torch.equal(d[:, 1], d[:, 2])  # grey noise: one field for all channels


def test_jpeg_stage_is_the_codec_at_the_drawn_quality():
    from kornia.enhance import jpeg_codec_differentiable

    x = photos(2, 32)
    cfg = config_from_dict({"scale": 1, "quantize": False, "jpeg1": {"quality": [35, 35]}}).only("jpeg1")
    out = Degrader(cfg)(x, seed=0)
    torch.testing.assert_close(out.lq, jpeg_codec_differentiable(x, torch.tensor([35.0, 35.0])).clamp(0, 1))


@pytest.mark.parametrize("stage", DegradationConfig.STAGES)
def test_each_stage_can_be_switched_off(stage):
    x = photos(2, 32, seed=1)
    # every stage forced to act: probabilities 1, ranges away from identity
    forced = {"scale": 2, "quantize": False, "jpeg_backend": "pil",
              "blur1": {"prob": 1.0, "kernel_sizes": [5, 7], "sinc_prob": 0.0},
              "blur2": {"prob": 1.0, "kernel_sizes": [5, 7], "sinc_prob": 0.0},
              "resize1": {"probs": [0, 1, 0], "scale": [0.5, 0.6]},
              "resize2": {"probs": [1, 0, 0], "scale": [1.1, 1.2]},
              "final_sinc": {"prob": 1.0, "kernel_sizes": [5, 7]}}
    on = config_from_dict(forced)
    off = config_from_dict(forced)
    getattr(off, stage).enabled = False
    a, b = Degrader(on)(x, seed=5), Degrader(off)(x, seed=5)
    assert all(p[stage] is not None for p in a.params)
    assert all(p[stage] is None for p in b.params)
    assert not torch.equal(a.lq, b.lq)
    # only this stage: the output differs from a plain resize; nothing at all: exactly a plain resize
    only = Degrader(config_from_dict(forced).only(stage))(x, seed=5)
    plain = Degrader(config_from_dict(forced).only())(x, seed=5)
    assert not torch.equal(only.lq, plain.lq)
    assert all(p[s] is None for p in only.params for s in DegradationConfig.STAGES if s != stage)


def test_all_stages_off_is_identity():
    x = photos(3, 32)
    cfg = config_from_dict({"scale": 1, "quantize": False}).only()
    out = Degrader(cfg)(x, seed=0)
    assert torch.equal(out.lq, x.float()) and torch.equal(out.lq_up, x.float())


def test_kernels():
    for kind, beta in (("gaussian", 1.0), ("generalized", 0.7), ("plateau", 1.5)):
        k = gaussian_kernel(11, 1.5, 0.8, 0.4, kind, beta)
        assert k.shape == (11, 11) and abs(float(k.sum()) - 1) < 1e-9 and float(k.min()) >= 0
        torch.testing.assert_close(k, k.flip(0).flip(1))  # point symmetric
    iso = gaussian_kernel(7, 1.2, 1.2, 0.0)
    ax = torch.arange(7, dtype=torch.float64) - 3
    g1 = torch.exp(-ax ** 2 / (2 * 1.2 ** 2))
    torch.testing.assert_close(iso, torch.outer(g1, g1) / torch.outer(g1, g1).sum())
    s = sinc_kernel(13, math.pi / 2)
    assert abs(float(s.sum()) - 1) < 1e-9 and int(s.argmax()) == 6 * 13 + 6
    torch.testing.assert_close(s, s.T)
    assert blur_kernel({"kind": "sinc", "size": 9, "omega_c": 2.0}).shape == (9, 9)


def test_restoration_prompt_and_config_errors():
    p = {"blur1": {"kind": "iso", "size": 7, "sigma_x": 2.1, "sigma_y": 2.1, "theta": 0.0}, "blur2": None,
         "noise1": {"kind": "gaussian", "sigma": 8.04, "gray": False}, "noise2": None, "jpeg1": 40.2,
         "jpeg2": 75.0, "final_sinc": None}
    assert restoration_prompt(p, 4) == "upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40"
    assert restoration_prompt({k: None for k in p}) == ""
    with pytest.raises(ValueError, match="blur1.sigmaa"):
        config_from_dict({"blur1": {"sigmaa": [1, 2]}})
    with pytest.raises(ValueError, match="kernel_sizes"):
        config_from_dict({"blur1": {"kernel_sizes": [3, 31]}})
    with pytest.raises(ValueError, match="multiple"):
        Degrader(config_from_dict({"scale": 4}))(torch.rand(1, 3, 30, 32))
