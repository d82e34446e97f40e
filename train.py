"""Training entry point of ComfyUI-DPIR (robust VAE, DPIR, T5 cache, export). See docs/training.md.

    python train.py dpir --config training/configs/dpir.yaml
    accelerate launch --config_file training/configs/accelerate/ddp.yaml train.py dpir --config my.yaml

The pack's folder name (ComfyUI-DPIR) is no Python identifier, so the pack
is imported under the alias ``dpir_pack`` (as the tests do).
"""
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if "dpir_pack" not in sys.modules:
    _pkg = types.ModuleType("dpir_pack")
    _pkg.__path__ = [str(ROOT)]
    sys.modules["dpir_pack"] = _pkg

if __name__ == "__main__":
    from dpir_pack.training.cpu_launch import relaunch_if_needed

    code = relaunch_if_needed(str(Path(__file__).resolve()), sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from dpir_pack.training.cli import main

    sys.exit(main())
