"""Reliability, part 3: a long-lived server under many runs (real ComfyUI on 127.0.0.1, CPU, tiny models).

* 20 restorations queued back to back (5 photos × 4 seed/strength pairs, in an order that mixes cache hits
  and misses), with a failing prompt (the model patched twice) in the middle: the 20 all succeed, each with
  its own image, and the ones also run alone before (with the queue empty) are bit-identical to those solo
  runs — no cross-talk through caches, patches or batching.
* Memory: the server's RSS after the queue is within 5% of its RSS after the first two runs (no growth from
  patches or cached tensors piling up). (On a GPU the same would hold for VRAM; these tests run on the CPU.)
* An interrupt during sampling stops the prompt, saves nothing, and the server then restores the next
  prompt exactly as before.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from host.comfy_harness import execution_error
from host.dpir_env import api_of, node_id, saved_images, write_photo

PHOTOS = [f"run_{i}.png" for i in range(5)]
PAIRS = [(11, 1.0), (12, 0.5), (13, 1.5), (14, 0.8)]  # (seed, strength)
# queue order: photo-major with a mixed pair order, so cache hits (same photo) and misses alternate
QUEUE = [(p, k) for p in range(5) for k in ((0, 1, 2, 3), (3, 0, 2, 1), (1, 3, 0, 2), (2, 0, 3, 1), (0, 2, 1, 3))[p]]
SOLO = [(0, 0), (3, 2), (1, 3), (4, 1)]  # also run alone first
FAIL_AFTER = 10  # a failing prompt goes into the queue after this many


@pytest.fixture(scope="module")
def server(dpir_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for i, name in enumerate(PHOTOS):
        dpir_server.add_input(write_photo(folder / name, 24, 20, seed=100 + i))
    return dpir_server


def restore(server, object_info, workflow_api, photo, pair, prefix, steps=1):
    seed, strength = PAIRS[pair]
    return api_of("dpir_restore", server, object_info, workflow_api, LoadImage={"image": PHOTOS[photo]},
                  DPIRRobustVAEEncode={"resize": "keep size"}, DPIRSamplerPatch={"steps": steps},
                  RandomNoise={"noise_seed": seed}, DPIRApplyLQCondition={"strength": strength},
                  SaveImage={"filename_prefix": prefix})


def rss(server) -> int:
    import psutil  # a ComfyUI requirement

    time.sleep(0.5)  # let the worker finish its post-prompt clean-up
    return psutil.Process(server.proc.pid).memory_info().rss


def output_files(server) -> set:
    return {p.name for p in server.output_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(server, object_info, workflow_api):
    """Solo runs, then the queue; returns what the tests check."""
    solo, memory = {}, {}
    for i, (photo, pair) in enumerate(SOLO):
        entry = server.run(restore(server, object_info, workflow_api, photo, pair, f"solo_{photo}_{pair}"), 600)
        solo[(photo, pair)] = saved_images(server, entry)
        if i == 1:
            memory["after 2 runs"] = rss(server)
    before = output_files(server)
    ids = []
    for n, (photo, pair) in enumerate(QUEUE):
        if n == FAIL_AFTER:
            bad = restore(server, object_info, workflow_api, 0, 0, "never_saved")
            apply = node_id(bad, "DPIRApplyLQCondition")
            bad["990"] = {"class_type": "DPIRApplyLQCondition", "inputs": {**bad[apply]["inputs"], "model": [apply, 0]}}
            bad[node_id(bad, "DPIRSamplerPatch")]["inputs"]["model"] = ["990", 0]
            failing = server.queue_prompt(bad)
        ids.append(server.queue_prompt(restore(server, object_info, workflow_api, photo, pair, f"queue_{n:02d}")))
    entries = [server.wait(i, timeout=900) for i in ids]
    failed = server.wait(failing, timeout=300)
    memory[f"after {len(SOLO) + len(QUEUE)} runs"] = rss(server)
    return {"solo": solo, "entries": entries, "images": [saved_images(server, e) for e in entries],
            "failed": failed, "memory": memory, "new_files": output_files(server) - before}


def test_queued_prompts_all_complete_with_their_own_images(server, runs):
    images = []
    for n, entry in enumerate(runs["entries"]):
        assert execution_error(entry) is None, f"queued prompt {n}: {execution_error(entry)}"
        (img,) = runs["images"][n]
        assert img.shape == (20, 24, 3)
        images.append(img)
    for a in range(len(images)):  # every photo/seed/strength gives its own result
        for b in range(a):
            assert not np.array_equal(images[a], images[b]), (QUEUE[a], QUEUE[b])
    assert len(runs["new_files"]) == len(QUEUE)  # the failing prompt saved nothing
    assert not any(f.startswith("never_saved") for f in runs["new_files"])


def test_queued_results_equal_solo_runs(runs):
    for (photo, pair), (solo,) in runs["solo"].items():
        (queued,) = runs["images"][QUEUE.index((photo, pair))]
        assert np.array_equal(queued, solo), (photo, pair)


def test_failing_prompt_in_the_middle_is_reported_and_isolated(runs):
    err = execution_error(runs["failed"])
    assert err is not None and "DPIRApplyLQCondition" in err and "already has a DPIR LQ condition" in err
    assert all(execution_error(e) is None for e in runs["entries"][FAIL_AFTER - 1:FAIL_AFTER + 1])


def test_memory_does_not_grow_over_the_runs(runs):
    (first, n2), (last, n24) = runs["memory"].items()
    print(f"server RSS {first}: {n2 / 2**20:.0f} MiB, {last}: {n24 / 2**20:.0f} MiB "
          f"({100 * (n24 - n2) / n2:+.1f}%)")
    assert n24 <= 1.05 * n2, runs["memory"]


def test_interrupt_during_sampling_then_the_next_prompt_runs(server, object_info, workflow_api, runs):
    before = output_files(server)
    offset = len(server.log_text())
    long = restore(server, object_info, workflow_api, 2, 1, "interrupted", steps=200)
    prompt_id = server.queue_prompt(long)
    deadline = time.monotonic() + 300
    while not re.search(r"\|\s*[1-9]\d*/200 \[", server.log_text()[offset:]):  # the sampler's progress bar
        assert time.monotonic() < deadline, "sampling did not start"
        server.check_alive()
        time.sleep(0.05)
    server.interrupt()
    entry = server.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    assert "interrupted" in execution_error(entry)
    assert output_files(server) == before  # nothing half-done was saved
    # the next prompt runs, and gives what it gave before the interrupt
    photo, pair = SOLO[0]
    entry = server.run(restore(server, object_info, workflow_api, photo, pair, "after_interrupt"), 600)
    (img,) = saved_images(server, entry)
    assert np.array_equal(img, runs["solo"][(photo, pair)][0])
