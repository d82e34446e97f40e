"""Scale-out: `accelerate launch --cpu --num_processes 2 train.py dpir` keeps both processes in sync."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import dpir_config, write_images

ROOT = Path(__file__).resolve().parents[2]


def launcher():
    exe = shutil.which("accelerate")
    return [exe] if exe else [sys.executable, "-m", "accelerate.commands.launch"]


def launch(args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    cmd = launcher() + (["launch"] if launcher()[0].endswith("accelerate") else [])
    cmd += ["--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", "29517", str(ROOT / "train.py")] + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_stay_in_sync(tiny_files, tmp_path):
    photos = write_images(tmp_path / "photos", n=4, size=(32, 32))
    d = dpir_config(tiny_files, photos, tmp_path / "run",
                    data={"folders": [str(photos)], "crop_size": 32, "resolutions": ["native"]})
    d["run"].update(max_steps=2, batch_size=1, write_rank_digests=True, export_at_end=True)
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    res = launch(["dpir", "--config", str(tmp_path / "cfg.json")], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    ranks = [json.loads((tmp_path / "run" / f"digest-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [2, 2]
    # same weights on both processes after the steps, and they did move
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["initial_digest"] == ranks[1]["initial_digest"] != ranks[0]["digest"]
    # the processes trained on different photos
    assert not set(ranks[0]["paths_seen"]) & set(ranks[1]["paths_seen"])
    # one export, written by the main process
    assert (tmp_path / "run" / "export" / "transformer" / "config.json").is_file()
