"""The model downloader (models/hub_download.py): the real huggingface_hub client against a Hub on 127.0.0.1.

Tiny repositories in the layouts a DPIR release may have are written at test time (tests/tiny_models.py) and
served by tests/fake_hub.py; nothing leaves the machine.
"""
from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

import tiny_models as tm
from dpir_pack.models import checkpoints, hub_download as hd
from fake_hub import FakeHub

SPEC = tm.TinySpec()


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    with FakeHub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token, no cache of this machine
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # huggingface_hub reads HF_HOME once, at import (an earlier test may have imported it): its cache and
        # token paths are set here too, so no run sees the machine's cache or a file cached by a previous run
        from huggingface_hub import constants

        for name, sub in (("HF_HUB_CACHE", "hub"), ("HF_TOKEN_PATH", "token"), ("HF_STORED_TOKENS_PATH", "stored_tokens")):
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, str(tmp_path / "hf_home" / sub))
        yield h


def diffusers_release(root):
    """The authors' layout: diffusers folders (sharded transformer), plus files DPIR does not need."""
    tm.write_transformer_folder(root / "dpir_ckpt" / "transformer", SPEC, sharded=True)
    tm.write_vae_folder(root / "dpir_ckpt" / "denoise_vae", SPEC, robust=True)
    tm.write_t5_embedding(root / "default_t5_prompt.safetensors", SPEC)
    (root / "README.md").write_text("# DPIR\n")
    (root / "model_index.json").write_text("{}")
    tm.write_t5_file(root / "text_encoder_3" / "model.safetensors", SPEC)  # a pipeline's encoder: never needed
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    tm.write_transformer_pth(root / "old" / "dpir_vae_encoder_trial.pth", SPEC)  # a stray .pth named as a VAE
    return root


def test_diffusers_release_takes_only_what_dpir_reads(hub, tmp_path):
    hub.add_folder("DehongKong/dpir", diffusers_release(tmp_path / "repo"))
    folder = tmp_path / "models" / "dpir"
    plan = hd.plan_kind("dpir_transformer", [{"repo": "DehongKong/dpir", "pick": "transformer"}], folder)
    shipped = sorted("transformer/" + f.name for f in (tmp_path / "repo" / "dpir_ckpt" / "transformer").iterdir())
    assert sorted(n for _, n in plan.files) == shipped and len(shipped) >= 4  # config, index, 2+ shards
    assert plan.names == ["transformer/diffusion_pytorch_model.safetensors.index.json"]
    hd.download(plan)
    vae = hd.plan_kind("robust_vae", [{"repo": "DehongKong/dpir", "pick": "robust_vae"}], folder)
    assert sorted(n for _, n in vae.files) == ["robust_vae/config.json", "robust_vae/diffusion_pytorch_model.safetensors"]
    hd.download(vae)
    emb = hd.plan_kind("t5_embedding", [{"repo": "DehongKong/dpir", "pick": "t5_embedding"}], folder)
    hd.download(emb)
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in hub.downloads()}
    assert fetched == {r.path for p in (plan, vae, emb) for r, _ in p.files}  # nothing else crossed the wire
    assert not (tmp_path / "models" / hd.STAGING).exists()
    ckpt = checkpoints.load_transformer(folder / "transformer")
    assert ckpt.lq_state_dict
    ref = tm.transformer_state_dict(SPEC)
    assert torch.equal(ckpt.state_dict["proj_out.weight"], ref["proj_out.weight"])
    assert checkpoints.load_vae(folder / "robust_vae").has_decoder
    assert (folder / "default_t5_prompt.safetensors").is_file()
    # a second plan finds everything in place and downloads nothing
    before = len(hub.downloads())
    again = hd.plan_kind("dpir_transformer", [{"repo": "DehongKong/dpir", "pick": "transformer"}], folder)
    assert again.todo() == [] and hd.download(again) and len(hub.downloads()) == before


def test_single_file_and_pth_releases(hub, tmp_path):
    single = tmp_path / "single"
    tm.write_transformer_file(single / "dpir_transformer.safetensors", SPEC)
    tm.write_vae_file(single / "dpir_robust_vae.safetensors", SPEC, robust=True)
    hub.add_folder("a/single", single)
    pth = tmp_path / "pth"
    tm.write_transformer_pth(pth / "checkpoints" / "dpir.pth", SPEC, module_prefix=True)
    torch.save(tm.transformer_state_dict(SPEC)["pos_embed.pos_embed"], pth / "checkpoints" / "pos_embed.t5")
    hub.add_folder("b/pth", pth)
    folder = tmp_path / "dpir"
    t = hd.plan_kind("dpir_transformer", [{"repo": "a/single", "pick": "transformer"}], folder)
    assert [n for _, n in t.files] == ["dpir_transformer.safetensors"]
    v = hd.plan_kind("robust_vae", [{"repo": "a/single", "pick": "robust_vae"}], folder)
    assert [n for _, n in v.files] == ["dpir_robust_vae.safetensors"]
    p = hd.plan_kind("dpir_transformer", [{"repo": "b/pth", "pick": "transformer"}], folder)
    assert [n for _, n in p.files] == ["dpir.pth", "pos_embed.t5"] and p.names == ["dpir.pth"]
    for plan in (t, v, p):
        hd.download(plan)
    assert checkpoints.load_transformer(folder / "dpir_transformer.safetensors").lq_state_dict
    assert checkpoints.load_transformer(folder / "dpir.pth").notes[0].startswith("position table taken from")
    assert checkpoints.load_vae(folder / "dpir_robust_vae.safetensors").config["latent_channels"] == 16


def test_gated_repository_needs_a_token_and_falls_back(hub, tmp_path):
    sd3 = tmp_path / "sd3"
    tm.write_vae_folder(sd3 / "vae", SPEC)
    tm.write_t5_file(sd3 / "text_encoder_3" / "model.safetensors", SPEC)
    hub.add_folder("stabilityai/stable-diffusion-3-medium-diffusers", sd3, gated=True)
    dpir = tmp_path / "dpir"
    tm.write_vae_folder(dpir / "robust_vae", SPEC, robust=True)
    hub.add_folder("DehongKong/dpir", dpir)
    gated = {"repo": "stabilityai/stable-diffusion-3-medium-diffusers",
             "files": {"vae/diffusion_pytorch_model.safetensors": "sd3_vae.safetensors"}}
    alt = {"repo": "DehongKong/dpir", "pick": "robust_vae", "single": "sd3_vae.safetensors", "note": "alternative"}
    folder = tmp_path / "models" / "vae"
    with pytest.raises(hd.DownloadError) as e:
        hd.plan_kind("sd3_vae", [gated], folder)
    msg = str(e.value)
    assert "gated" in msg and "accept its licence on https://huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers" in msg
    assert "HF_TOKEN" in msg and not hub.downloads()
    plan = hd.plan_kind("sd3_vae", [gated, alt], folder)  # no token: the alternative named in the table
    assert plan.repo == "DehongKong/dpir" and [n for _, n in plan.files] == ["sd3_vae.safetensors"]
    plan = hd.plan_kind("sd3_vae", [gated, alt], folder, token=hub.token)
    assert plan.repo.startswith("stabilityai/")
    hd.download(plan, token=hub.token)
    assert checkpoints.load_vae(folder / "sd3_vae.safetensors").has_decoder
    assert not any("text_encoder" in p for p in hub.downloads())


def test_missing_repository(hub, tmp_path):
    with pytest.raises(hd.DownloadError, match="the repository nobody/nothing was not found"):
        hd.plan_kind("t5xxl", [{"repo": "nobody/nothing", "files": {"t5.safetensors": "t5.safetensors"}}], tmp_path)
    hub.add_repo("some/repo", {"README.md": b"hi"})
    with pytest.raises(hd.DownloadError, match="holds no file in a layout"):
        hd.plan_kind("dpir_transformer", [{"repo": "some/repo", "pick": "transformer"}], tmp_path)


def test_cut_transfer_is_resumed(hub, tmp_path):
    from safetensors.torch import save_file

    # bigger than the client's 10 MiB read chunk, so part of it is on disk when the connection drops
    src = tmp_path / "src" / "dpir.safetensors"
    src.parent.mkdir()
    save_file({"w": torch.randn(6_000_000)}, str(src))
    hub.add_repo("c/cut", {"dpir.safetensors": src}, knobs={"dpir.safetensors": {"cut": True}})
    seen = []
    plan = hd.plan_kind("dpir_transformer", [{"repo": "c/cut", "pick": "transformer"}], tmp_path / "dpir")
    hd.download(plan, progress=lambda f, done, total: seen.append((done, total)))
    out = tmp_path / "dpir" / "dpir.safetensors"
    assert out.read_bytes() == src.read_bytes()
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("dpir.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    resumed_at = int(ranges[1][6:-1])
    assert 0 < resumed_at <= src.stat().st_size // 2  # the second request continued where the cut left off
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)


def test_checksum_mismatch_is_refused_and_nothing_is_left(hub, tmp_path):
    src = tm.write_transformer_file(tmp_path / "src" / "dpir.safetensors", SPEC)
    hub.add_repo("d/bad", {"dpir.safetensors": src}, knobs={"dpir.safetensors": {"lie_sha256": True}})
    folder = tmp_path / "models" / "dpir"
    plan = hd.plan_kind("dpir_transformer", [{"repo": "d/bad", "pick": "transformer"}], folder)
    with pytest.raises(hd.DownloadError, match="does not match the Hub's listing .*sha256.*it was deleted"):
        hd.download(plan)
    assert hub.downloads()  # it was downloaded, then refused
    assert not (folder / "dpir.safetensors").exists()
    assert not [p for p in (tmp_path / "models").rglob("*.safetensors")]


def test_too_little_disk_space_is_refused_before_downloading(hub, tmp_path):
    src = tm.write_transformer_file(tmp_path / "src" / "dpir.safetensors", SPEC)
    hub.add_repo("e/big", {"dpir.safetensors": src})
    folder = tmp_path / "dpir"
    plan = hd.plan_kind("dpir_transformer", [{"repo": "e/big", "pick": "transformer"}], folder)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(hd.DownloadError, match="not enough disk space"):
        hd.download(plan, min_free=free)  # asks to keep everything free: no room for the file
    assert hub.downloads() == [] and not folder.exists()


def test_local_names_cannot_escape(tmp_path):
    for bad in ("../x.safetensors", "/etc/x", ".hidden/x.safetensors", "a/../../b"):
        with pytest.raises(hd.DownloadError, match="must stay inside"):
            hd._safe_local(bad)


def test_verify_uses_sha256_and_git_blob_ids(tmp_path):
    f = tmp_path / "x.json"
    f.write_bytes(b"{}")
    blob = hashlib.sha1(b"blob 2\0{}").hexdigest()
    assert hd.verify(f, hd.RemoteFile("x.json", 2, None, blob)) is None
    assert "git blob id" in hd.verify(f, hd.RemoteFile("x.json", 2, None, "0" * 40))
    assert "bytes instead of" in hd.verify(f, hd.RemoteFile("x.json", 3, None, blob))
    assert hd.verify(f, hd.RemoteFile("x.json", 2, hashlib.sha256(b"{}").hexdigest(), None)) is None


def test_a_file_in_the_hugging_face_cache_is_not_downloaded_again(hub, tmp_path):
    from huggingface_hub import hf_hub_download

    src = tm.write_transformer_file(tmp_path / "src" / "dpir.safetensors", SPEC)
    hub.add_repo("f/cached", {"dpir.safetensors": src})
    hf_hub_download("f/cached", "dpir.safetensors", endpoint=hub.url)  # e.g. fetched earlier by diffusers
    n = len(hub.downloads())
    plan = hd.plan_kind("dpir_transformer", [{"repo": "f/cached", "pick": "transformer"}], tmp_path / "dpir")
    hd.download(plan)
    assert len(hub.downloads()) == n == 1
    assert (tmp_path / "dpir" / "dpir.safetensors").read_bytes() == src.read_bytes()


def test_a_file_put_there_by_hand_is_kept(hub, tmp_path):
    """The SD3 VAE placed by hand and no token: nothing is fetched, and the alternative never replaces it."""
    sd3 = tmp_path / "sd3"
    tm.write_vae_folder(sd3 / "vae", SPEC)
    hub.add_folder("stabilityai/stable-diffusion-3-medium-diffusers", sd3, gated=True)
    tm.write_vae_folder(tmp_path / "dpir" / "robust_vae", SPEC, robust=True)
    hub.add_folder("DehongKong/dpir", tmp_path / "dpir")
    mine = tm.write_vae_file(tmp_path / "models" / "vae" / "sd3_vae.safetensors", SPEC, naming="ldm")
    before = mine.read_bytes()
    sources = [{"repo": "stabilityai/stable-diffusion-3-medium-diffusers",
                "files": {"vae/diffusion_pytorch_model.safetensors": "sd3_vae.safetensors"}},
               {"repo": "DehongKong/dpir", "pick": "robust_vae", "single": "sd3_vae.safetensors"}]
    plan = hd.plan_kind("sd3_vae", sources, mine.parent)
    assert plan.repo.startswith("stabilityai/") and plan.todo() == []
    hd.download(plan)
    assert mine.read_bytes() == before and not hub.downloads()


# --------------------------------------------------------------------------- a hostile mirror


def _weights(tmp_path, name="dpir.safetensors", n=1024):
    """A small real .safetensors file (LFS-sized for the fake Hub)."""
    from safetensors.torch import save_file

    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.arange(n, dtype=torch.float32)}, str(path))
    return path


def test_a_body_longer_than_listed_is_cut_at_the_listed_size(hub, tmp_path):
    src = _weights(tmp_path)  # 4 KiB listed, then 128 MiB more without a length
    f = hub.add_repo("g/flood", {"dpir.safetensors": src}, knobs={"dpir.safetensors": {"flood": 128 * 2**20}})
    folder = tmp_path / "models" / "dpir"
    plan = hd.plan_kind("dpir_transformer", [{"repo": "g/flood", "pick": "transformer"}], folder)
    with pytest.raises(hd.DownloadError, match=r"sent more than the \d+ bytes it lists for dpir.safetensors"):
        hd.download(plan)
    sent = f.files["dpir.safetensors"].sent
    # the client stops reading at its first chunk past the size (huggingface_hub reads 10 MiB at a time); what the
    # server wrote beyond that sat in socket buffers when the connection closed
    assert sent < 32 * 2**20, f"the mirror sent {sent} bytes"
    assert [p for p in tmp_path.joinpath("models").rglob("*") if p.is_file()] == []  # nothing kept, not even a partial


def test_a_file_without_size_and_hash_is_refused_before_the_transfer(hub, tmp_path):
    src = tm.write_t5_file(tmp_path / "src" / "t5xxl_fp16.safetensors", SPEC)
    hub.add_repo("comfyanonymous/flux_text_encoders", {"t5xxl_fp16.safetensors": src},
                 knobs={"t5xxl_fp16.safetensors": {"bare": True}})  # and the body would end after half the bytes
    source = {"repo": "comfyanonymous/flux_text_encoders", "files": {"t5xxl_fp16.safetensors": "t5xxl_fp16.safetensors"}}
    folder = tmp_path / "models" / "text_encoders"
    with pytest.raises(hd.DownloadError) as e:
        hd.download(hd.plan_kind("t5xxl", [source], folder))
    msg = str(e.value)
    assert "t5xxl_fp16.safetensors" in msg and hub.url in msg and "without a size and a hash" in msg
    assert hub.downloads() == [] and not folder.exists()
    # a size alone is not enough either
    hub.add_repo("h/nohash", {"dpir.safetensors": _weights(tmp_path)},
                 knobs={"dpir.safetensors": {"listing": {"lfs": None, "blobId": None}}})
    with pytest.raises(hd.DownloadError, match=r"lists dpir.safetensors of h/nohash without a hash"):
        hd.plan_kind("dpir_transformer", [{"repo": "h/nohash", "pick": "transformer"}], tmp_path / "dpir")
    assert hub.downloads() == []


def test_the_tables_size_and_hash_win_over_the_mirrors_word(hub, tmp_path):
    src = _weights(tmp_path)
    real = {"size": src.stat().st_size, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    path = {"dpir.safetensors": "dpir.safetensors"}
    # the mirror lists no hash: the table's verifies the bytes, and the file is accepted
    hub.add_repo("i/quiet", {"dpir.safetensors": src}, knobs={"dpir.safetensors": {"listing": {"lfs": None, "blobId": None}}})
    folder = tmp_path / "dpir"
    plan = hd.plan_kind("dpir_transformer", [{"repo": "i/quiet", "files": path, "verify": {"dpir.safetensors": real}}], folder)
    hd.download(plan)
    assert (folder / "dpir.safetensors").read_bytes() == src.read_bytes()
    # the mirror serves other bytes and lists their true size and hash: the table refuses them after the transfer
    other = _weights(tmp_path / "o", n=1024)
    other.write_bytes(other.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # same size, one weight changed
    hub.add_repo("j/swap", {"dpir.safetensors": other})
    swap = {"repo": "j/swap", "files": path, "verify": {"dpir.safetensors": real}}
    with pytest.raises(hd.DownloadError, match="another sha256 than the pack's table"):
        hd.plan_kind("dpir_transformer", [swap], tmp_path / "dpir2")
    # a size the table knows otherwise is refused before a byte moves
    with pytest.raises(hd.DownloadError, match=r"with \d+ bytes, but the pack's table knows it as 7 bytes"):
        hd.plan_kind("dpir_transformer", [{**swap, "verify": {"dpir.safetensors": {"size": 7}}}], tmp_path / "dpir3")
    # the mirror hides its hash but serves other bytes: the table's hash catches them
    hub.add_repo("k/quietswap", {"dpir.safetensors": other},
                 knobs={"dpir.safetensors": {"listing": {"lfs": None, "blobId": None}}})
    plan = hd.plan_kind("dpir_transformer", [{**swap, "repo": "k/quietswap"}], tmp_path / "dpir4")
    with pytest.raises(hd.DownloadError, match="sha256 .* instead of"):
        hd.download(plan)
    assert not (tmp_path / "dpir4" / "dpir.safetensors").exists()
    assert not any(p.name == "dpir.safetensors" for p in (tmp_path / "dpir4").parent.rglob("*") if "dpir4" in str(p))


TOKEN = "hf_" + "Zq7" * 11 + "x"  # shaped like a real token


def test_a_mirror_echoing_the_token_does_not_get_it_shown(hub, tmp_path, monkeypatch):
    hub.add_repo("l/echo", {"dpir.safetensors": _weights(tmp_path)}, echo_auth=True)
    with pytest.raises(hd.DownloadError) as e:
        hd.plan_kind("dpir_transformer", [{"repo": "l/echo", "pick": "transformer"}], tmp_path / "dpir", token=TOKEN)
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for h in hub.headers)  # the mirror did get it
    msg = str(e.value)
    assert "500" in msg and TOKEN not in msg and "Zq7Zq7" not in msg and "Bearer hf_" not in msg, msg
    # a token not shaped like a Hugging Face one is masked too: the pack knows the value it sent
    with pytest.raises(hd.DownloadError) as e:
        hd.plan_kind("dpir_transformer", [{"repo": "l/echo", "pick": "transformer"}], tmp_path / "dpir", token="s3cr3t-t0ken")
    assert "s3cr3t-t0ken" not in str(e.value)


@pytest.mark.parametrize("bad", ["../../../../escape.safetensors", "a/../../escape.safetensors", "/abs/escape.safetensors",
                                 "a\\..\\escape.safetensors", "C:/escape.safetensors", "a//escape.safetensors",
                                 "./escape.safetensors", "a/.escape.safetensors",
                                 "a/escape\x00.safetensors", "a/esc%2e%2e/ape.safetensors", "a/nul.safetensors",
                                 "a/escape\n.safetensors", "~/escape.safetensors"])
def test_remote_paths_are_checked_before_the_library_sees_them(hub, tmp_path, bad):
    hub.add_repo("m/paths", {bad: _weights(tmp_path, n=4096), "small.safetensors": _weights(tmp_path, "s.safetensors")})
    with pytest.raises(hd.DownloadError, match="refusing it: .*Only plain relative paths are fetched") as e:
        hd.plan_kind("dpir_transformer", [{"repo": "m/paths", "pick": "transformer"}], tmp_path / "models" / "dpir")
    assert hub.url in str(e.value)
    assert [m for m, p, _ in hub.requests if "/resolve/" in p] == []  # not even a HEAD
    assert sorted(p.name for p in tmp_path.rglob("*escape*")) == []


def test_path_rules():
    for good in ("model.safetensors", "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                 "vae/config.json", "pos_embed.t5", "clip_vision_g.safetensors", "a b (1)/w+v@2=x,[y].pt"):
        assert hd.path_problem(good) is None, good
    for bad in ("", ".", "..", "a/..", "/a", "a\\b", "D:x", "a//b", "a/", ".git/config", "a/b\x7f", "a/b:c",
                "aux.json", "a/" * 17 + "b", "x" * 1001, "a/b."):
        assert hd.path_problem(bad), bad


def test_a_listing_that_contradicts_itself_or_names_no_commit_is_refused(hub, tmp_path):
    # the entry's size and its LFS size differ: no size is trusted, so nothing is fetched
    hub.add_repo("n/twosizes", {"dpir.safetensors": _weights(tmp_path)}, knobs={"dpir.safetensors": {"listing": {"size": 10}}})
    with pytest.raises(hd.DownloadError, match="without a size"):
        hd.plan_kind("dpir_transformer", [{"repo": "n/twosizes", "pick": "transformer"}], tmp_path / "dpir")
    # a commit that is not a commit id (it ends up in URLs and cache paths)
    repo = hub.add_repo("o/badsha", {"dpir.safetensors": _weights(tmp_path)})
    repo.sha = "../../refs"
    with pytest.raises(hd.DownloadError, match="gave no commit"):
        hd.plan_kind("dpir_transformer", [{"repo": "o/badsha", "pick": "transformer"}], tmp_path / "dpir")
    assert hub.downloads() == []
