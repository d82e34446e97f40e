"""Prepare what travels to a GPU machine that has PyTorch but no network and no ComfyUI, for bench/gpu_suite.py.

    python bench/prepare_gpu.py [--comfyui PATH] [--no-wheels]

Writes the git-ignored folder ``.gpu/`` in the pack (about 20 MiB; the device tool carries at most 64 MiB):

* ``.gpu/ComfyUI/``: a copy of the host ComfyUI (found as the tests find it: $COMFYUI_PATH, the folders above the
  pack, ~/comfy/ComfyUI) without its tests, CI files, examples and API nodes (the suite runs with
  --disable-api-nodes);
* ``.gpu/wheels/``: pure-Python wheels (Python 3.12, any platform) of what the suite imports and the machine
  lacks: ComfyUI's sampler library torchsde (+ trampoline) and diffusers (+ importlib_metadata), which the
  independent reference (tests/reference.py) and the random-weight writer (tests/tiny_models.py) use;
* ``.gpu/stubs/av/``: a stand-in for PyAV. ComfyUI imports ``av`` at start (its video types) and the suite
  never reads or writes video; av is a 30 MiB compiled wheel. The suite puts ``.gpu/stubs`` at the END of
  sys.path, so a real av, where installed, always wins. Touching the stand-in raises ImportError.

Then, on the GPU machine (the device tool: carry [".gpu"]), run the one command that --help prints last (COMMAND
below; also in docs/gpu-suite.md). It installs the wheels into /tmp/site (no network, no dependencies resolved: every one is here), then runs the
suite on the GPU (--budget-s keeps it inside 8 minutes with its set-up). Results: $OUT/gpu_suite.json and
$OUT/gpu_suite.md, rewritten after every stage.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from host.comfy_harness import find_comfyui  # noqa: E402

DEST = ROOT / ".gpu"
# Pure-Python wheels the GPU image lacks (KINDS.md lists what it has). Versions: the ones proven in the
# device-like virtual environment (docs/gpu-suite.md).
WHEELS = ["diffusers==0.42.1", "importlib_metadata==8.7.0", "torchsde==0.2.6", "trampoline==0.1.2"]
SKIP = {"tests", "tests-unit", ".git", ".github", ".ci", "script_examples", "comfy_api_nodes", "__pycache__",
        "custom_nodes", "models", "input", "output", "temp", "user", "web_custom_versions"}
COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl && "
           "PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_suite.py --out $OUT --budget-s 420")
_NO_AV = "the DPIR GPU suite's stand-in for PyAV (bench/prepare_gpu.py): no video here"
# The names ComfyUI's modules use at import time (annotations, base classes); any real use raises.
AV_STUB = {
    "__init__.py": f'''"""{_NO_AV}."""
from . import container, subtitles  # noqa: F401


def _unavailable(*args, **kwargs):
    raise ImportError("{_NO_AV}")


open = _unavailable
time_base = 1000000


class _Unavailable:
    def __init__(self, *args, **kwargs):
        _unavailable()

    from_ndarray = staticmethod(_unavailable)


class AudioFrame(_Unavailable):
    pass


class VideoFrame(_Unavailable):
    pass


class AudioStream(_Unavailable):
    pass


class VideoStream(_Unavailable):
    pass
''',
    "container.py": "class InputContainer:\n    pass\n",
    "subtitles/__init__.py": "from . import stream  # noqa: F401\n",
    "subtitles/stream.py": "class SubtitleStream:\n    pass\n",
}


def copy_comfyui(src: Path, dst: Path) -> None:
    def ignore(folder, names):
        top = Path(folder) == src
        return [n for n in names if n == "__pycache__" or n.endswith(".pyc") or (top and n in SKIP)]

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=ignore, symlinks=False)
    for folder in ("custom_nodes", "models", "input", "output"):
        (dst / folder).mkdir(exist_ok=True)


def download_wheels(dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dst), *WHEELS],
                   check=True)
    impure = [w.name for w in dst.glob("*.whl") if not w.name.endswith("-none-any.whl")]
    if impure:
        raise SystemExit(f"expected pure-Python wheels only, got {impure}")


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Run on the GPU machine (carry .gpu):\n  " + COMMAND,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, help="the ComfyUI to copy (default: found as the tests find it)")
    ap.add_argument("--dest", type=Path, default=DEST, help="where to prepare (default: .gpu in the pack, which "
                    "the suite finds by itself)")
    ap.add_argument("--no-wheels", action="store_true",
                    help="skip the wheel download (an environment that has diffusers and torchsde already, e.g. CI)")
    args = ap.parse_args(argv)
    src = args.comfyui or find_comfyui().path
    if src is None:
        raise SystemExit(f"no ComfyUI to copy: {find_comfyui().reason}; pass --comfyui")
    dest = args.dest.resolve()
    copy_comfyui(Path(src).resolve(), dest / "ComfyUI")
    for name, text in AV_STUB.items():
        path = dest / "stubs" / "av" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not args.no_wheels:
        download_wheels(dest / "wheels")
    total = size_mib(dest)
    print(f"prepared {dest} ({total:.1f} MiB; the device tool carries at most 64 MiB with the working tree)")
    print(f"on the GPU machine (carry: [\".gpu\"]):\n  {COMMAND}")
    return 0 if total < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
