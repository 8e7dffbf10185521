"""MAE-AST pretraining through fairseq's own CLIs: fairseq-hydra-train and fairseq-train --user-dir."""
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, console, run_cli

pytest.importorskip("fairseq")

LOSS = re.compile(r"train_inner.*?\bloss=([0-9.]+).*?num_updates=(\d+)")


@pytest.fixture(scope="module")
def overfit_set(tmp_path_factory):
    """A fixed tiny set: 8 clips of 16 kHz melodies and chirps (6 train / 2 valid)."""
    from maeast_fairseq.data.synthetic import make_corpus

    root = tmp_path_factory.mktemp("overfit")
    make_corpus(str(root / "audio"), 8, seed=0, rates=(16000,), kinds=("tone", "chirp"))
    subprocess.run([sys.executable, "-m", "manifests", str(root / "audio"), "--dest", str(root / "data"),
                    "--ext", "wav", "--valid-percent", "0.25", "--seed", "1"], check=True, capture_output=True)
    return root


def run(cmd, cwd):
    return run_cli(cmd, cwd)


def losses(log):
    return [(int(u), float(v)) for v, u in LOSS.findall(log)]


def assert_overfits(log, min_drop=0.25):
    vals = [v for _, v in losses(log)]
    assert len(vals) >= 20, log[-3000:]
    first, last = sum(vals[:3]) / 3, sum(vals[-10:]) / 10
    assert last <= (1 - min_drop) * first, f"loss {first:.3f} -> {last:.3f}: less than {min_drop:.0%} lower"


@pytest.mark.slow
def test_hydra_train_overfits_checkpoints_and_resumes(overfit_set, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
            "--config-name", "mae_ast_patch_tiny", f"task.data={overfit_set / 'data'}",
            f"checkpoint.save_dir={ckpt}", f"hydra.run.dir={tmp_path / 'hydra'}", "common.log_interval=1"]
    log = run(base, cwd=tmp_path)
    assert_overfits(log)
    assert (ckpt / "checkpoint_last.pt").is_file()
    assert "valid on 'valid' subset" in log
    # resume: a higher max_update continues from checkpoint_last.pt at update 150
    log2 = run(base + ["optimization.max_update=155"], cwd=tmp_path)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 150 updates\)", log2), log2[-3000:]
    updates = [u for u, _ in losses(log2)]
    assert updates and min(updates) == 151 and max(updates) == 155


@pytest.mark.slow
def test_fairseq_train_user_dir(overfit_set, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [
        console("fairseq-train"), str(overfit_set / "data"), "--user-dir", os.path.join(REPO, "maeast_fairseq"),
        "--task", "maeast_pretraining", "--arch", "mae_ast", "--criterion", "masked_recon_nce",
        # the front end, named explicitly (MAE-AST)
        "--window-type", "povey", "--norm", "none", "--length-policy", "crop_to_shortest",
        # a tiny frame model
        "--patch-time", "2", "--patch-freq", "128", "--mask-type", "random", "--encoder-layers", "2",
        "--embed-dim", "64", "--ffn-dim", "128", "--num-heads", "4", "--decoder-layers", "1",
        "--decoder-embed-dim", "64", "--decoder-ffn-dim", "128", "--decoder-heads", "4", "--dropout", "0",
        "--attention-dropout", "0", "--dropout-input", "0", "--encoder-layerdrop", "0",
        "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "0.003", "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", "10", "--total-num-update", "60", "--max-update", "60", "--batch-size", "8",
        "--required-batch-size-multiple", "1", "--num-workers", "0", "--log-interval", "1", "--log-format", "simple",
        "--save-dir", str(ckpt), "--save-interval-updates", "30", "--no-epoch-checkpoints", "--seed", "1",
    ]
    log = run(cmd, cwd=tmp_path)
    assert_overfits(log)
    assert (ckpt / "checkpoint_last.pt").is_file()
    log2 = run([c if c != "60" else "65" for c in cmd], cwd=tmp_path)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 60 updates\)", log2), log2[-3000:]
    # fairseq-validate scores a split with the saved task and criterion (no --arch: no model group in its config),
    # without fairseq's hydra deprecation warnings (silenced by the plugin)
    val = run([console("fairseq-validate"), str(overfit_set / "data"),
               "--user-dir", os.path.join(REPO, "maeast_fairseq"), "--task", "maeast_pretraining", "--path", str(ckpt / "checkpoint_last.pt"), "--valid-subset", "valid",
               "--batch-size", "8"], cwd=tmp_path)
    assert re.search(r"valid on 'valid' subset \| loss [0-9.]+ \| nce [0-9.]+", val), val[-3000:]
    assert "deprecat" not in val.lower() and "no longer experimental" not in val, val[:3000]


DDP_ARGS = [
    "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
    "distributed_training.distributed_init_method=env://", "distributed_training.distributed_no_spawn=true",
    "distributed_training.distributed_rank=${oc.env:RANK}", "distributed_training.device_id=${oc.env:LOCAL_RANK}",
]


@pytest.mark.slow
def test_two_process_cpu_training_with_torchrun_and_resume(overfit_set, tmp_path, monkeypatch):
    """The README's torchrun command: 2 CPU processes over gloo train, checkpoint and resume, with torch's safe
    weights_only loading (no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: maeast_fairseq.fairseq_compat fixes fairseq's resume)."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    ckpt = tmp_path / "ckpt"
    base = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
            console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
            "--config-name", "mae_ast_patch_tiny", f"task.data={overfit_set / 'data'}",
            f"checkpoint.save_dir={ckpt}", f"hydra.run.dir={tmp_path / 'hydra'}", "dataset.batch_size=4",
            "common.log_interval=1", "optimization.max_update=10"] + DDP_ARGS
    log = run(base, cwd=tmp_path)
    assert "distributed init (rank 1)" in log
    assert max(u for u, _ in losses(log)) == 10
    log2 = run(base[:-len(DDP_ARGS) - 1] + ["optimization.max_update=12"] + DDP_ARGS, cwd=tmp_path)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 10 updates\)", log2), log2[-3000:]
    assert sorted(u for u, _ in losses(log2)) == [11, 12]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["mae_ast_frame_tiny", "mae_ast_patch_6l_tiny", "mae_ast_frame_6l_tiny"])
def test_other_mae_ast_tiny_configs_overfit_with_hydra(config, overfit_set, tmp_path):
    log = run([console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
               "--config-name", config, f"task.data={overfit_set / 'data'}", f"checkpoint.save_dir={tmp_path / 'c'}",
               f"hydra.run.dir={tmp_path / 'hydra'}", "common.log_interval=1"], cwd=tmp_path)
    assert_overfits(log)
