"""Restoration prompts: the shared formatter equals the trainer's previous one; the estimators' errors are bounded;
prompt composition and the T5 fit of captions."""
from __future__ import annotations

import importlib.util

from hypothesis import given, settings, strategies as st

from dpir_pack.models.captioning import fit_tokens
from dpir_pack.models.restoration_prompt import format_restoration_prompt, restoration_prompt
from dpir_pack.models.text_prompt import compose_prompt
from dpir_pack.training import degradation
from dpir_pack.training.degradation import DegradationConfig, Degrader


def trainer_prompt_before_the_move(p: dict, scale=None) -> str:
    """training/degradation.py's restoration_prompt as it was before it moved to models/ (verbatim)."""
    parts = []
    if scale and scale > 1:
        parts.append(f"upscale {scale}x")
    sigmas = [(b["sigma_x"] + b["sigma_y"]) / 2 for b in (p.get("blur1"), p.get("blur2")) if b and "sigma_x" in b]
    if sigmas:
        parts.append(f"deblur sigma {max(sigmas):.1f}")
    if any(b and b["kind"] == "sinc" for b in (p.get("blur1"), p.get("blur2"), p.get("final_sinc"))):
        parts.append("remove ringing")
    noises = [n for n in (p.get("noise1"), p.get("noise2")) if n]
    gauss = [n["sigma"] for n in noises if n["kind"] == "gaussian"]
    pois = [n["scale"] for n in noises if n["kind"] == "poisson"]
    if gauss:
        parts.append(f"denoise {max(gauss):.1f}")
    if pois:
        parts.append(f"poisson {max(pois):.1f}")
    qs = [q for q in (p.get("jpeg1"), p.get("jpeg2")) if q is not None]
    if qs:
        parts.append(f"jpeg {round(min(qs))}")
    return ", ".join(parts)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2 ** 40), scale=st.sampled_from([None, 1, 2, 4]), batch=st.integers(1, 3))
def test_shared_formatter_is_the_trainers(seed, scale, batch):
    """Every parameter draw of the trainer's degradation gives the same text as before the move, and the
    trainer's module uses the shared function."""
    assert degradation.restoration_prompt is restoration_prompt
    for p in Degrader(DegradationConfig()).draw(batch, seed):
        assert restoration_prompt(p, scale) == trainer_prompt_before_the_move(p, scale)


blur = st.one_of(st.none(), st.builds(lambda s, kind: {"kind": kind, "size": 7, "sigma_x": s, "sigma_y": s,
                                                      "theta": 0.0}, st.floats(0.1, 5), st.just("iso")),
                 st.builds(lambda w: {"kind": "sinc", "size": 7, "omega_c": w}, st.floats(1, 3)))
noise = st.one_of(st.none(), st.builds(lambda s: {"kind": "gaussian", "sigma": s, "gray": False}, st.floats(0.5, 40)),
                  st.builds(lambda s: {"kind": "poisson", "scale": s, "gray": True}, st.floats(0.05, 3)))
quality = st.one_of(st.none(), st.floats(1, 100))


@settings(max_examples=300, deadline=None)
@given(b1=blur, b2=blur, n1=noise, n2=noise, q1=quality, q2=quality, scale=st.sampled_from([None, 2, 4]))
def test_node_values_give_the_trainers_text(b1, b2, n1, n2, q1, q2, scale):
    """The node's path (values → formatter) writes what the trainer wrote for parameters with those values."""
    p = {"blur1": b1, "blur2": b2, "final_sinc": None, "noise1": n1, "noise2": n2, "jpeg1": q1, "jpeg2": q2}
    sig = [(b["sigma_x"] + b["sigma_y"]) / 2 for b in (b1, b2) if b and "sigma_x" in b]
    gauss = [n["sigma"] for n in (n1, n2) if n and n["kind"] == "gaussian"]
    pois = [n["scale"] for n in (n1, n2) if n and n["kind"] == "poisson"]
    qs = [q for q in (q1, q2) if q is not None]
    text = format_restoration_prompt(upscale=scale, blur_sigma=max(sig) if sig else None,
                                     ringing=any(b and b["kind"] == "sinc" for b in (b1, b2)),
                                     noise_sigma=max(gauss) if gauss else None,
                                     poisson_scale=max(pois) if pois else None, jpeg_quality=min(qs) if qs else None)
    assert text == trainer_prompt_before_the_move(p, scale)


def _bench():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "estimators.py"
    spec = importlib.util.spec_from_file_location("dpir_bench_estimators", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_estimators_on_images_degraded_by_the_trainer():
    """Bounds a little above what bench/estimators.py measures (docs/usage.md, "Automatic prompts")."""
    bench = _bench()
    res = bench.measure(images=6, size=192, seed=100)
    noise = bench.summary(res["noise"])
    assert noise["found"] == 6 and noise["max_abs"] < 1.0  # 8-bit levels, sigma 1–30
    blur = bench.summary(res["blur"])
    assert blur["found"] == 6 and blur["median_abs"] < 0.35 and blur["max_abs"] < 0.8
    for backend in ("jpeg_pil", "jpeg_kornia"):
        pairs = [(t, e) for t, e in res[backend] if t <= 88]  # above ≈ 90 the steps are too fine to tell apart
        assert all(e is not None and abs(e - t) <= 4 for t, e in pairs), pairs
    assert all(e is None for _, e in res["clean_as_jpeg"])  # never JPEG-coded: no JPEG term


def test_compose_prompt():
    assert compose_prompt("film photo, 1970s,", "a red house", "") == "film photo, 1970s, a red house"
    assert compose_prompt("", " a red house ", "upscale 4x") == "a red house, upscale 4x"
    assert compose_prompt("old photo", "", "") == "old photo"
    assert compose_prompt("", "", "") == ""


@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=12), min_size=1, max_size=60),
       st.integers(2, 40))
def test_fit_tokens_cuts_at_words(words, limit):
    text = " ".join(words)

    def count(t):  # one token per character + the end token
        return len(t) + 1

    out, cut = fit_tokens(text, count, limit)
    assert count(out) <= limit or out == ""
    assert cut == (count(text) > limit)
    if cut:
        assert text.startswith(out) and (out == "" or text[len(out)] == " ")
        kept = len(out.split(" ")) if out else 0
        assert count(" ".join(words[: kept + 1])) > limit  # the next word would not have fitted
    else:
        assert out == text


def test_format_values():
    assert format_restoration_prompt(upscale=4, blur_sigma=2.06, noise_sigma=8, jpeg_quality=39.6) == \
        "upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40"
    assert format_restoration_prompt(upscale=2.5) == "upscale 2.5x"
    assert format_restoration_prompt(upscale=1) == ""
    assert format_restoration_prompt(blur_sigma=0.0, ringing=True, poisson_scale=1.23) == \
        "deblur sigma 0.0, remove ringing, poisson 1.2"
