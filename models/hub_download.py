"""Fetch the pack's model files from the Hugging Face Hub, safely (no ComfyUI needed).

A *source* is one entry of a kind's ``"hub"`` list in ``MODEL_FILES``
(nodes/model_files.py): a repository and either a ``pick`` rule or an explicit
``files`` map (repository path -> local name). The downloader

1. asks the Hub what the repository holds (``model_info(files_metadata=True)``:
   paths, sizes, LFS sha256, git blob ids) at one pinned commit;
2. picks the files by the layouts the loaders recognise (a diffusers folder with
   its config and shards, a single file, a consolidated ``.pth``, a
   ``pos_embed.t5``, a T5 prompt embedding) and nothing else;
3. checks every chosen path itself (plain relative paths only: no ``..``, absolute paths, backslashes, drive
   letters, empty parts or odd characters), requires a size and a hash (LFS sha256 or git blob id) for each
   file from the listing (the table's own ``verify`` entries win over the mirror's word), and checks that the
   token may read them (gated repositories) and that the disk has room, before a byte is written;
4. downloads with ``huggingface_hub`` (its cache, the token from ``HF_TOKEN`` / ``hf auth login``) into a
   hidden staging folder beside the destination model folder, stops a transfer at the first byte past the
   listed size, verifies each file's size and hash, and only then renames them to their final names; a file
   that fails is deleted.

Destinations are built from the table's local names only (never from a
request), and every path stays inside the destination folder. Messages from the Hub library pass through
models/redact.py (a mirror may echo the token).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from .errors import DPIRModelError
from .redact import redact

# beside the model folder, not in it: no model list (the core's included) shows a file before it is verified
STAGING = ".dpir-download"
MIN_FREE = 512 * 2**20  # bytes left free after a download
WEIGHTS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
SHARD = re.compile(r"^diffusion_pytorch_model-\d+-of-\d+\.safetensors$")
# folders of a full pipeline that DPIR never needs
NOT_DPIR = ("text_encoder", "tokenizer", "scheduler", "unet", "controlnet", "image_encoder", "feature_extractor")
HUB_PAGE = "https://huggingface.co"

Progress = Callable[[str, int, int], None]  # (file, bytes done, bytes total)


class DownloadError(DPIRModelError):
    """A model could not be fetched; the message says why and what to do (secrets masked: it may quote the Hub)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class _TooLong(Exception):
    """Raised inside the transfer when the body runs past the listed size."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (verifies small, non-LFS files)


@dataclass
class Plan:
    """What one source gives for one kind: remote files and their final local paths."""
    kind: str
    repo: str
    revision: str
    folder: Path
    files: list[tuple[RemoteFile, str]]  # (remote, local name relative to folder)
    names: list[str] = field(default_factory=list)  # what the loader lists afterwards

    def todo(self) -> list[tuple[RemoteFile, str]]:
        """Files not yet in place. A file that exists is never replaced: this downloader leaves nothing
        unverified under a final name, so an existing file was put there on purpose (or by an earlier run)."""
        return [(r, n) for r, n in self.files if not (self.folder / n).exists()]

    def bytes_needed(self) -> int:
        return sum(r.size or 0 for r, _ in self.todo())


# --------------------------------------------------------------------------- choosing files


# one part of a path: what model repositories use (letters, digits, a few marks; no separators, no controls)
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-@=,()\[\] ]{0,199}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9_.\-]{1,96}")
_HEX40, _HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")


def path_problem(path) -> str | None:
    """Why ``path`` is not a plain relative path inside a folder (None if it is one)."""
    if not isinstance(path, str) or not path:
        return "it is empty"
    if len(path) > 1000:
        return "it is too long"
    if "\\" in path:
        return "it holds a backslash"
    if re.match(r"[A-Za-z]:", path):
        return "it starts with a drive letter"
    if path.startswith("/"):
        return "it is absolute"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "it has an empty, '.' or '..' part"
    if len(parts) > 16:
        return "it is too deep"
    for p in parts:
        if not _PART.fullmatch(p) or p.endswith((" ", ".")):
            return f"its part {p!r} holds characters a model file name never needs"
        if p.split(".")[0].lower() in _RESERVED:
            return f"its part {p!r} is a reserved device name on Windows"
    return None


def _safe_local(name: str) -> str:
    why = path_problem(name)
    if why:
        raise DownloadError(f"refusing the local name {name!r}: it must stay inside the model folder ({why})")
    return name


def _safe_remote(path: str, repo: str) -> str:
    """The pack's own check of a repository path, before huggingface_hub sees it (older versions of the library
    write wherever a '..' path points)."""
    why = path_problem(path)
    if why:
        raise DownloadError(f"the mirror {_endpoint()} lists {path!r} in {repo}; refusing it: {why}. "
                            "Only plain relative paths are fetched: check HF_ENDPOINT or the mirror")
    return path


def _diffusers_folders(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Repository folders holding config.json + diffusers weights (single file, or index + shards)."""
    by_dir: dict[str, list[RemoteFile]] = {}
    for f in files:
        by_dir.setdefault(str(PurePosixPath(f.path).parent), []).append(f)
    out = {}
    for d, fs in by_dir.items():
        names = {PurePosixPath(f.path).name: f for f in fs}
        if "config.json" not in names:
            continue
        if "diffusion_pytorch_model.safetensors" in names:
            keep = ["config.json", "diffusion_pytorch_model.safetensors"]
        elif "diffusion_pytorch_model.safetensors.index.json" in names:
            keep = ["config.json", "diffusion_pytorch_model.safetensors.index.json"] + sorted(
                n for n in names if SHARD.match(n))
        else:
            continue
        out[d] = [names[n] for n in keep]
    return out


def _hint(path: str, words) -> bool:
    low = path.lower()
    return any(w in low for w in words)


def _weight_files(files, suffixes=WEIGHTS):
    return [f for f in files if f.path.lower().endswith(suffixes) and not _hint(f.path, NOT_DPIR)]


def _largest(files):
    return max(files, key=lambda f: f.size or 0) if files else None


def pick(rule: str, files: list[RemoteFile], single: str | None = None) -> list[tuple[RemoteFile, str]]:
    """The files of a repository that a rule takes, with their local names; [] if none fit.

    ``transformer``: a diffusers folder named like a transformer (else any diffusers folder that is not a VAE),
    else the largest single ``.safetensors`` (not a VAE/CLIP/T5 file), else the largest ``.pth``/``.pt``/``.bin``;
    plus ``pos_embed.t5`` (the released scripts' position table) beside it.
    ``robust_vae``: a diffusers VAE folder (robust/denoise names first), else a single VAE file.
    ``t5_embedding``: a small ``.safetensors``/``.pt`` named like a T5 / prompt embedding.
    ``single`` keeps only the weights file, under that local name (e.g. the robust VAE's full file as SD3's VAE).
    """
    folders = _diffusers_folders(files)
    vae_words, other_words = ("vae", "autoencoder"), ("clip", "t5", "text", "embed", "prompt", "lq_branch", "control")
    chosen: list[tuple[RemoteFile, str]] = []
    if rule == "transformer":
        dirs = [d for d in folders if not _hint(d, vae_words + NOT_DPIR)]
        dirs.sort(key=lambda d: (not _hint(PurePosixPath(d).name, ("transformer", "dit")), d))
        if dirs:
            chosen = [(f, "transformer/" + PurePosixPath(f.path).name) for f in folders[dirs[0]]]
            base = dirs[0]
        else:
            loose = [f for f in _weight_files(files) if not _hint(f.path, vae_words + other_words)]
            best = (_largest([f for f in loose if f.path.endswith(".safetensors")])
                    or _largest([f for f in loose if not f.path.endswith(".safetensors")]))
            if best is None:
                return []
            chosen = [(best, PurePosixPath(best.path).name)]
            base = str(PurePosixPath(best.path).parent)
        pos = [f for f in files if PurePosixPath(f.path).name == "pos_embed.t5"]
        if pos:  # the one nearest the weights
            near = min(pos, key=lambda f: (str(PurePosixPath(f.path).parent) not in (base, str(PurePosixPath(base).parent)), f.path))
            chosen.append((near, str(PurePosixPath(chosen[0][1]).parent / "pos_embed.t5")))
    elif rule == "robust_vae":
        dirs = [d for d in folders if _hint(PurePosixPath(d).name, vae_words)]
        dirs.sort(key=lambda d: (not _hint(d, ("robust", "denoise")), d))
        if dirs:
            chosen = [(f, "robust_vae/" + PurePosixPath(f.path).name) for f in folders[dirs[0]]]
        else:
            loose = [f for f in _weight_files(files, (".safetensors",)) if _hint(PurePosixPath(f.path).name, vae_words)]
            loose.sort(key=lambda f: (not _hint(f.path, ("robust", "denoise")), -(f.size or 0)))
            chosen = [(loose[0], PurePosixPath(loose[0].path).name)] if loose else []
    elif rule == "t5_embedding":
        loose = [f for f in files if f.path.lower().endswith((".safetensors", ".pt"))
                 and _hint(PurePosixPath(f.path).name, ("t5", "prompt", "embed")) and "pos_embed" not in f.path
                 and (f.size or 0) < 200 * 2**20]
        loose.sort(key=lambda f: f.path)
        chosen = [(loose[0], PurePosixPath(loose[0].path).name)] if loose else []
    else:
        raise ValueError(f"unknown pick rule {rule!r}")
    if single is not None:
        weights = [(f, n) for f, n in chosen if n.endswith(WEIGHTS) and not n.endswith("pos_embed.t5")]
        chosen = [(weights[0][0], single)] if len(weights) == 1 else []
    return chosen


def pick_listed(mapping: dict[str, str], files: list[RemoteFile]) -> list[tuple[RemoteFile, str]]:
    """An explicit {repository path: local name} map; paths the repository lacks are left out."""
    have = {f.path: f for f in files}
    return [(have[p], n) for p, n in mapping.items() if p in have]


# --------------------------------------------------------------------------- the Hub


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB_PAGE).rstrip("/")


def repo_url(repo: str) -> str:
    return f"{HUB_PAGE}/{repo}"


def file_url(repo: str, path: str, revision: str = "main") -> str:
    """The Hub's download URL of one file (what ComfyUI's workflow model links hold)."""
    return f"{HUB_PAGE}/{repo}/resolve/{revision}/{path}"


def _explain(e: Exception, repo: str, token_hint: str, token: str | None = None) -> str:
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, _TooLong):
        return str(e)
    if isinstance(e, GatedRepoError):
        return (f"{repo} is a gated repository: accept its licence on {repo_url(repo)} (logged in), then give "
                f"the download a token: {token_hint}")
    if isinstance(e, RepositoryNotFoundError):
        return f"the repository {repo} was not found on the Hub ({_endpoint()}), or it is private"
    if isinstance(e, RemoteEntryNotFoundError):
        return f"a file of {repo} disappeared from the Hub while it was being fetched; try again"
    return redact(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", token)


TOKEN_HINT = "set HF_TOKEN=hf_... (a read token from https://huggingface.co/settings/tokens) or run `hf auth login`"


def _size(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _hex(v, pattern) -> str | None:
    return v.lower() if isinstance(v, str) and pattern.fullmatch(v.lower()) else None


def _remote(s) -> RemoteFile:
    """One listing entry; sizes and hashes that are not well-formed count as missing."""
    lfs = getattr(s, "lfs", None)
    size, sha256 = _size(getattr(s, "size", None)), None
    if lfs is not None:
        get = lfs.get if isinstance(lfs, dict) else lambda k: getattr(lfs, k, None)
        sha256 = _hex(get("sha256"), _HEX64)
        if _size(get("size")) is not None and size is not None and _size(get("size")) != size:
            size = None  # the entry contradicts itself
    # an LFS file's blob id is its pointer's, not its bytes': only the sha256 verifies it
    blob = None if lfs is not None else _hex(getattr(s, "blob_id", None), _HEX40)
    return RemoteFile(s.rfilename, size, sha256, blob)


def list_repo(repo: str, revision: str | None = None, token: str | None = None) -> tuple[str, list[RemoteFile], object]:
    """(pinned commit, files, gated flag) of a model repository."""
    from huggingface_hub import HfApi

    if not _REPO.fullmatch(repo) or ".." in repo:
        raise DownloadError(f"refusing the repository name {repo!r}")
    info = HfApi(endpoint=_endpoint()).model_info(repo, revision=revision, files_metadata=True, token=token)
    files = [_remote(s) for s in info.siblings or [] if isinstance(getattr(s, "rfilename", None), str)]
    if not _hex(info.sha, _HEX40):
        raise DownloadError(f"the Hub gave no commit for {repo}; is HF_ENDPOINT ({_endpoint()}) a Hugging Face Hub?")
    if len({f.path for f in files}) != len(files):
        raise DownloadError(f"the mirror {_endpoint()} lists a file of {repo} twice; check HF_ENDPOINT or the mirror")
    return info.sha.lower(), files, info.gated


def _checked(remote: RemoteFile, repo: str, known: dict | None) -> RemoteFile:
    """The remote file with the size and hash its download must match, known before the transfer starts: the pack's
    table (``known``) wins over the mirror's listing; a file with no size or no hash is refused."""
    if known:
        size, sha256 = known.get("size"), known.get("sha256")
        if remote.size is not None and size is not None and remote.size != size:
            raise DownloadError(f"the mirror {_endpoint()} lists {remote.path} of {repo} with {remote.size} bytes, "
                                f"but the pack's table knows it as {size} bytes: refusing it (check HF_ENDPOINT)")
        if remote.sha256 and sha256 and remote.sha256 != sha256:
            raise DownloadError(f"the mirror {_endpoint()} lists {remote.path} of {repo} with another sha256 than "
                                "the pack's table: refusing it (check HF_ENDPOINT)")
        remote = RemoteFile(remote.path, size if size is not None else remote.size, sha256 or remote.sha256,
                            None if sha256 else remote.blob_id)
    if remote.size is None or not (remote.sha256 or remote.blob_id):
        missing = " and ".join(w for w, gone in (("a size", remote.size is None),
                                                 ("a hash (LFS sha256 or git blob id)", not (remote.sha256 or remote.blob_id)))
                               if gone)
        raise DownloadError(f"the mirror {_endpoint()} lists {remote.path} of {repo} without {missing}, so the "
                            "download could not be verified; refusing it. The Hugging Face Hub gives both: check "
                            "HF_ENDPOINT or the mirror")
    return remote


def _check_access(repo: str, revision: str, path: str, token: str | None) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    get_hf_file_metadata(hf_hub_url(repo, path, revision=revision, endpoint=_endpoint()), token=token)


def plan_source(kind: str, source: dict, folder: Path, token: str | None = None) -> Plan:
    """Ask the Hub what ``source`` holds now and choose the files for ``kind``; DownloadError if it cannot give them."""
    repo = source["repo"]
    try:
        revision, files, gated = list_repo(repo, source.get("revision"), token)
        if "files" in source:
            chosen = pick_listed(source["files"], files)
        else:
            chosen = pick(source["pick"], files, source.get("single"))
        if not chosen or not any(n.endswith(WEIGHTS) or n.endswith(".t5") for _, n in chosen):
            raise DownloadError(f"{repo} holds no file in a layout the loaders read for {kind} "
                                f"({len(files)} files listed)")
        chosen = [(r, _safe_local(n)) for r, n in chosen if _safe_remote(r.path, repo)]
        plan = Plan(kind, repo, revision, Path(folder), chosen)
        known, todo = source.get("verify") or {}, {n for _, n in plan.todo()}
        # proof is needed for what will be fetched; a file already in place is never replaced
        plan.files = [(_checked(r, repo, known.get(r.path)) if n in todo else r, n) for r, n in chosen]
        if plan.todo():
            _check_access(repo, revision, plan.todo()[0][0].path, token)  # a gated repo refuses here, before a byte
    except DownloadError:
        raise
    except Exception as e:  # the Hub client's errors, network errors
        raise DownloadError(f"{kind} from {repo}: {_explain(e, repo, TOKEN_HINT, token)}") from None
    plan.names = ([n for _, n in chosen if n.endswith(".index.json")]
                  or [n for _, n in chosen if n.endswith(WEIGHTS)])
    return plan


def plan_kind(kind: str, sources: list[dict], folder: Path, token: str | None = None) -> Plan:
    """The first source of the list that can give ``kind``; a DownloadError naming every reason otherwise."""
    reasons = []
    for source in sources:
        try:
            return plan_source(kind, source, folder, token)
        except DownloadError as e:
            note = f" ({source['note']})" if source.get("note") else ""
            reasons.append(f"- {source['repo']}{note}: {e}")
    raise DownloadError(f"cannot download {kind}:\n" + "\n".join(reasons))


# --------------------------------------------------------------------------- downloading


def check_disk(folder: Path, needed: int, min_free: int = MIN_FREE) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + min_free > free:
        raise DownloadError(f"not enough disk space in {folder}: the download needs {needed / 2**30:.2f} GiB and "
                            f"{min_free / 2**30:.2f} GiB should stay free, but only {free / 2**30:.2f} GiB are free. "
                            "Free some space, or add a folder on another disk to extra_model_paths.yaml")


def sha256_file(path: Path, chunk: int = 8 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    h.update(path.read_bytes())
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> str | None:
    """None if the file is the one the Hub lists (its size and one hash), else what differs."""
    size = path.stat().st_size
    if remote.size is None:
        return "no size to check it against"
    if size != remote.size:
        return f"{size} bytes instead of {remote.size}"
    if remote.sha256:
        got = sha256_file(path)
        return None if got == remote.sha256 else f"sha256 {got[:12]}… instead of the Hub's {remote.sha256[:12]}…"
    if remote.blob_id:
        got = _git_blob_sha1(path)
        return None if got == remote.blob_id else f"git blob id {got[:12]}… instead of {remote.blob_id[:12]}…"
    return "no hash to check it against"


def _tqdm_class(remote: RemoteFile, progress: Progress | None):
    """huggingface_hub's bar, counting the bytes of one file: the transfer stops (before the chunk is written) at
    the first byte past the listed size, and the progress callback (if any) gets (file, done, listed size)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    cap = remote.size

    class Capped(hf_tqdm):
        # own counters: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS, no terminal) keeps none
        def __init__(self, *args, **kwargs):
            self._done = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            self._done += int(n or 0)
            if self._done > cap:
                raise _TooLong(f"the mirror {_endpoint()} sent more than the {cap} bytes it lists for {remote.path}; "
                               "the transfer was stopped and nothing of it was kept")
            out = super().update(n)
            if progress is not None:
                progress(remote.path, self._done, cap)
            return out

    return Capped


def _transient(e: Exception) -> bool:
    """A cut connection or a timeout: worth another try, which resumes from the partial file (huggingface_hub
    before 1.20 keeps it between calls and does not retry a cut itself)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, (HfHubHTTPError, _TooLong)):
        return False
    return bool({c.__name__ for c in type(e).__mro__} & {"TransportError", "ConnectionError", "TimeoutException",
                                                         "Timeout", "ChunkedEncodingError", "ProtocolError"})


def download(plan: Plan, token: str | None = None, progress: Progress | None = None,
             min_free: int = MIN_FREE) -> list[Path]:
    """Fetch what ``plan`` lacks; returns the final paths. Nothing appears under a final name unless verified."""
    from huggingface_hub import hf_hub_download

    todo = plan.todo()
    if not todo:
        return [plan.folder / n for _, n in plan.files]
    check_disk(plan.folder, plan.bytes_needed(), min_free)
    # verified files stay staged after a failure: the next run finds them there and fetches only the rest
    staging = plan.folder.parent / STAGING / plan.folder.name / plan.repo.replace("/", "--")
    staged = []
    for remote, name in todo:
        _safe_remote(remote.path, plan.repo)  # again: a Plan may be made by hand
        remote = _checked(remote, plan.repo, None)
        try:
            for attempt in range(3):
                try:
                    got = Path(hf_hub_download(plan.repo, remote.path, revision=plan.revision, local_dir=staging,
                                               token=token, endpoint=_endpoint(),
                                               tqdm_class=_tqdm_class(remote, progress)))
                    break
                except Exception as e:
                    if attempt == 2 or not _transient(e):
                        raise
        except Exception as e:  # the Hub client's and the network's errors
            if isinstance(e, _TooLong):  # nothing of an over-long body stays (the library may keep a partial)
                shutil.rmtree(staging / ".cache", ignore_errors=True)
            raise DownloadError(f"{plan.kind}: downloading {remote.path} from {plan.repo} failed: "
                                f"{_explain(e, plan.repo, TOKEN_HINT, token)}") from None
        real = got.resolve()
        if not (real.is_file() and staging.resolve() in real.parents) or got.is_symlink():
            raise DownloadError(f"{plan.kind}: huggingface_hub put {remote.path} outside the staging folder "
                                f"{staging}; nothing was moved into {plan.folder}")
        bad = verify(got, remote)
        if bad:
            got.unlink()
            raise DownloadError(f"{plan.kind}: {remote.path} from {plan.repo} does not match the Hub's listing "
                                f"({bad}); it was deleted. Download again; if it persists the mirror or proxy "
                                "in between serves a different file")
        staged.append((got, plan.folder / name))
    for got, final in staged:  # all verified: now they get their final names
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), str(final))  # a rename on the same disk
    shutil.rmtree(staging, ignore_errors=True)
    for empty in (staging.parent, staging.parent.parent):
        try:
            empty.rmdir()
        except OSError:
            break
    return [plan.folder / n for _, n in plan.files]
