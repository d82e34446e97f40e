"""``accelerate launch --cpu --num_processes N`` without MPI: start the N processes with torchrun.

accelerate starts several CPU processes only through an MPI launcher
(``--mpirun_hostfile``); without one it runs the script once, with
``MASTER_ADDR`` set but no rank, and the run would silently be a single
process. ``train.py`` calls ``relaunch_if_needed`` first: in that situation
it reads the process count the user gave ``accelerate launch`` (its command
line or its ``--config_file``) and starts that many copies of itself with
``torch.distributed.run`` (gloo), each of which accelerate then sees as one
rank of a MULTI_CPU run. GPU launches and MPI launches are left alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_RANK_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
              "PMI_RANK", "DPIR_CPU_RELAUNCHED")


def _flag(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def requested_processes(launcher_argv: list[str]) -> int | None:
    """``--num_processes`` of an ``accelerate launch`` command line (or of its ``--config_file``)."""
    n = _flag(launcher_argv, "--num_processes", "--num-processes")
    if n is not None:
        return int(n)
    cfg = _flag(launcher_argv, "--config_file", "--config-file")
    if cfg and Path(cfg).is_file():
        import yaml

        return int((yaml.safe_load(Path(cfg).read_text()) or {}).get("num_processes", 1))
    return None


def _parent_argv() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def relaunch_if_needed(script: str, args: list[str]) -> int | None:
    """The exit code of a torchrun relaunch, or None when this process should just run."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes") or "MASTER_ADDR" not in env:
        return None
    if any(v in env for v in _RANK_VARS):
        return None
    parent = _parent_argv()
    if not any("accelerate" in a for a in parent[:3]):
        return None
    n = requested_processes(parent)
    if not n or n < 2:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", env["MASTER_ADDR"], "--master_port", env.get("MASTER_PORT", "29500"), script, *args]
    print(f"train.py: accelerate asked for {n} CPU processes without an MPI launcher; starting them with "
          "torch.distributed.run (gloo)", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env={**env, "DPIR_CPU_RELAUNCHED": "1"})
