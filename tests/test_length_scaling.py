"""benchmarks/length_scaling.py: the clip-length arithmetic, the long-input handling per method, the memory
estimate, and the script end to end on the tiny models (every row measured, the table printed, the PNG written)."""
import itertools
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from maeast_fairseq.fbank import FbankConfig, num_frames

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import length_scaling  # noqa: E402
import train_step  # noqa: E402


def test_clip_frames_and_waveform_length():
    # 100 frames per second, rounded half up to whole 16-frame patches: 2.5 s = 15.6 -> 16 patches, 5 s = 31.25 -> 31,
    # 10 s = 62.5 -> 63, 20 s / 40 s exact; anything shorter than a patch gets one
    assert [length_scaling.clip_frames(s, 16) for s in (2.5, 5, 10, 20, 40, 0.01)] == [256, 496, 1008, 2000, 4000, 16]
    for frames in (16, 96, 1008, 4000):  # the embed mode's waveform gives exactly the other modes' frames
        assert num_frames(length_scaling.wave_samples(frames), FbankConfig()) == frames


def test_long_input_handling_per_method():
    def handle(name, frames, mode="infer"):
        core, model, task, _, _ = train_step.load_config(name)
        return length_scaling.long_input_handling(core, model, task, frames, mode)

    # EAT refuses clips past its 768-row position table: the benchmark raises max_time_patches to the clip's rows
    assert handle("eat_base", 16 * 800) == ({"max_time_patches": 800}, "max_time_patches raised 768 -> 800 "
                                                                       "(sin-cos table)")
    assert handle("eat_base", 4000)[0] == {}
    assert handle("ssast_patch", 4000) == ({}, "learned positions interpolated 64 -> 250 time columns")
    assert handle("ssast_patch", 256) == ({}, "learned positions: first 16 of 64 time columns")
    assert handle("mae_ast_patch", 4000)[0] == {}
    # the embedding API cuts 4000 frames into ceil(250 / 64) = 4 windows of the 1024-frame training length
    assert handle("mae_ast_patch", 4000, "embed")[1].startswith("4 windows of <= 1024 frames")
    assert handle("eat_base", 16 * 800, "embed")[0] == {}  # windows never need a larger table


def test_memory_estimate():
    rows = [{"tokens": 100, "base_rss_mb": 50.0, "peak_rss_mb": 150.0, "time_s": 1.0},
            {"tokens": 200, "base_rss_mb": 50.0, "peak_rss_mb": 450.0, "time_s": 1.0}]
    # growth above base 100 -> 400 MB for 2x the tokens: exponent 2, so 2x more tokens -> 4 x 400 MB
    assert length_scaling.estimate_peak_mb(rows, 400) == pytest.approx(50 + 1600)
    assert length_scaling.estimate_peak_mb(rows[:1], 300) == pytest.approx(50 + 300)  # one point: linear
    assert length_scaling.estimate_peak_mb([], 300) is None


@pytest.mark.slow
def test_length_scaling_tiny_end_to_end(tmp_path):
    out, png = tmp_path / "ls.json", tmp_path / "ls.png"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # 2 threads on a shared 2-core machine spin-wait (BENCHMARKS.md)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "length_scaling.py"), "--tiny", "--seconds", "1,2",
         "--repeats", "1", "--warmup", "0", "--json", str(out), "--png", str(png)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    methods, modes = ["ssast_patch", "mae_ast_patch", "eat_base"], ["train", "infer", "embed"]
    rows = {(r["method"], r["mode"], r["seconds"]): r for r in res["rows"]}
    assert set(rows) == set(itertools.product(methods, modes, [1.0, 2.0])) and len(res["rows"]) == 18
    for key, r in rows.items():
        assert "error" not in r and "skipped" not in r, (key, r)
        for k in length_scaling.ROW_KEYS:
            assert k in r, (key, k)
        assert r["time_s"] > 0 and len(r["times_s"]) == 1 and r["gflop"] > 0, key
        assert r["peak_mem_mb"] >= r["base_rss_mb"] > 0, key  # ru_maxrss: the peak includes the start
        # 1 s = 100 frames -> 6 patches of 16 (96 frames), 2 s -> 13 (208); x 8 frequency patches
        assert (r["frames"], r["tokens"]) == ((96, 48) if r["seconds"] == 1 else (208, 104)), key
        if r["mode"] != "train":
            assert r["output_size"] == (r["tokens"] if r["mode"] == "infer" else r["frames"] // 16), key
        if r["mode"] == "embed":
            assert r["windows"] == 1, key  # 208 frames fit one window (256 or 1024 frames)
    # one progress line per point on stderr, one markdown row per point on stdout
    assert sum(line.startswith("[") and "/18]" in line for line in proc.stderr.splitlines()) == 18
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | mode | audio s |") and len(table) == 1 + 18
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
