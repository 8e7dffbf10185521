"""Paths that do what they say: a relative task.data under fairseq-hydra-train (which runs in hydra.run.dir), a
relative checkpoint.save_dir (said where it lands), and one-line errors for a wrong checkpoint path."""
import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, console, fairseq_env

pytest.importorskip("fairseq")

from maeast_fairseq.cli import embed as embed_cli  # noqa: E402
from maeast_fairseq.cli import evaluate as evaluate_cli  # noqa: E402
from maeast_fairseq.tasks.base import launch_dir, resolve_data_folder  # noqa: E402
from maeast_fairseq.tasks.pretraining import PretrainingTaskConfig  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A launch folder holding ``audio/{a,b}/`` (6 one-second clips) and ``data/`` (labelled train / valid / test)."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = root / "audio" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / f"c{i}.wav"), (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    subprocess.run([console("maeast-manifest"), "audio", "--dest", "data", "--valid-percent", "0.2", "--test-percent",
                    "0.2", "--labels-from", "parent"], cwd=root, check=True, capture_output=True)
    return root


def test_relative_data_folder_without_hydra(project, monkeypatch):
    monkeypatch.chdir(project)
    assert launch_dir() is None
    cfg = PretrainingTaskConfig(data="data")
    assert resolve_data_folder(cfg, "train.tsv") == str(project / "data") == cfg.data  # made absolute
    cfg = PretrainingTaskConfig(data="nowhere")
    with pytest.raises(FileNotFoundError, match=rf"task.data='nowhere' is not a folder \(there is no "
                                                rf"{re.escape(str(project / 'nowhere'))}\). Fix: .*task.data=\$PWD/data"):
        resolve_data_folder(cfg, "train.tsv")


@pytest.mark.slow
def test_relative_data_and_save_dir_under_hydra(project):
    """fairseq-hydra-train moves into hydra.run.dir: task.data=data still means <launch folder>/data, and the log says
    where the relative checkpoint.save_dir went."""
    cmd = [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"), "--config-name",
           "mae_ast_frame_tiny", "task.data=data", "hydra.run.dir=outputs/run", "checkpoint.save_dir=ckpt",
           "optimization.max_update=1", "dataset.disable_validation=true"]
    proc = subprocess.run(cmd, cwd=project, env=fairseq_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"task.data='data' is relative: read from the launch folder, {project / 'data'}" in log
    run_dir = project / "outputs" / "run"
    assert f"checkpoint.save_dir=ckpt: a relative folder; fairseq-hydra-train runs in hydra.run.dir={run_dir}" in log
    assert f"go to {run_dir / 'ckpt'}" in log
    assert (run_dir / "ckpt" / "checkpoint_last.pt").is_file()
    # a relative task.data that is nowhere names both folders it looked in
    proc = subprocess.run(cmd[:5] + ["task.data=missing", "hydra.run.dir=outputs/run2"], cwd=project,
                          env=fairseq_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"task.data='missing' is not a folder (there is no {project / 'missing'} nor "
            f"{project / 'outputs' / 'run2' / 'missing'}; fairseq-hydra-train runs in hydra.run.dir=") in log


def test_wrong_checkpoint_path_is_one_line(project, capsys):
    missing = str(project / "no_such.pt")
    with pytest.raises(SystemExit) as exit_info:
        embed_cli.main([missing, str(project / "data" / "train.tsv"), "--out", str(project / "e.npz")])
    assert str(exit_info.value) == f"[maeast-embed] cannot load {missing}: no checkpoint file or exported folder at " \
                                   f"{missing!r}"
    garbage = project / "garbage.pt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as exit_info:
        embed_cli.main([str(garbage), str(project / "data" / "train.tsv"), "--out", str(project / "e.npz")])
    assert str(exit_info.value).startswith(f"[maeast-embed] cannot load {garbage}: ") and "\n" not in \
        str(exit_info.value)
    for upstream in (missing, f"random:{missing}"):
        assert evaluate_cli.main([upstream, "--data", str(project / "data")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"upstream {upstream!r}: no such checkpoint file ({missing})" in err
    assert evaluate_cli.main([str(garbage), "--data", str(project / "data"), "--no-cache"]) == 2
    assert f"maeast-evaluate: cannot load the upstream {garbage}: " in capsys.readouterr().err
