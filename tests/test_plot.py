"""``maeast-plot``: loss curves from fairseq logs (json and simple formats) and tensorboard folders, and the
reconstruction figure of a user's checkpoint and clip."""
import json

import numpy as np
import pytest
import soundfile as sf

from maeast_fairseq.cli import plot as plot_cli

SIMPLE = """\
[2026-12-07 02:42:41,055][train_inner][INFO] - epoch 001:      5 / 5 loss=7.3611, nce=4.6912, num_updates=5, lr=0.0015
[2026-12-07 02:42:41,200][valid][INFO] - epoch 001 | valid on 'valid' subset | loss 9.5 | nce 5.1 | num_updates 5
[2026-12-07 02:42:42,404][train_inner][INFO] - epoch 002:      5 / 5 loss=7.166, nce=4.5796, num_updates=10, lr=0.003
some other line | loss 3 | num_updates 7
"""


def json_log(path):
    lines = []
    for u, loss in ((100, 6.0), (200, 5.5)):
        rec = {"epoch": 1, "loss": f"{loss}", "nce": "4.1", "num_updates": f"{u}", "lr": "0.0001"}
        lines.append(f"[2026-12-07 01:00:00,000][train_inner][INFO] - {json.dumps(rec)}")
    rec = {"epoch": 1, "valid_loss": "5.9", "valid_accuracy": "50.0", "valid_num_updates": "200"}
    lines.append(f"[2026-12-07 01:00:01,000][valid][INFO] - {json.dumps(rec)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_both_log_formats_are_read(tmp_path):
    simple = tmp_path / "simple.log"
    simple.write_text(SIMPLE)
    run = plot_cli.read_log(str(simple))
    assert [(r["num_updates"], r["loss"], r["nce"]) for r in run["train"]] == [(5, 7.3611, 4.6912), (10, 7.166, 4.5796)]
    assert [(r["num_updates"], r["loss"]) for r in run["valid"]] == [(5, 9.5)]
    run = plot_cli.read_log(str(json_log(tmp_path / "json.log")))
    assert [(r["num_updates"], r["loss"]) for r in run["train"]] == [(100, 6.0), (200, 5.5)]
    assert run["valid"] == [{"epoch": 1.0, "loss": 5.9, "accuracy": 50.0, "num_updates": 200}]


def test_tensorboard_folder_is_read(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    for sub, rows in (("train_inner", [(5, 7.5), (10, 7.0)]), ("valid", [(10, 8.0)])):
        writer = tensorboardX.SummaryWriter(str(tmp_path / "tb" / sub))
        for step, loss in rows:
            writer.add_scalar("loss", loss, step)
            writer.add_scalar("nce", loss / 2, step)
        writer.close()
    run = plot_cli.read_tensorboard(str(tmp_path / "tb"))
    assert [(r["num_updates"], r["loss"], r["nce"]) for r in run["train"]] == [(5, 7.5, 3.75), (10, 7.0, 3.5)]
    assert [(r["num_updates"], r["loss"]) for r in run["valid"]] == [(10, 8.0)]


def test_loss_png_and_clear_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    simple = tmp_path / "run_a.log"
    simple.write_text(SIMPLE)
    out = tmp_path / "loss.png"
    assert plot_cli.main(["loss", str(simple), str(json_log(tmp_path / "run_b.log")), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert plot_cli.main(["loss", str(empty), "--out", str(out)]) == 2
    assert "no train_inner / valid line" in capsys.readouterr().err
    assert plot_cli.main(["loss", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_reconstruction_of_a_users_checkpoint_and_clip(tmp_path):
    pytest.importorskip("matplotlib")
    from test_embed import save_fake

    ckpt, _ = save_fake(tmp_path / "m.pt", "mae_ast_patch")
    clip = tmp_path / "clip.wav"
    rng = np.random.default_rng(0)
    sf.write(clip, (0.1 * rng.standard_normal(44100)).astype(np.float32), 44100)  # 1 s at 44.1 kHz: resampled
    out = tmp_path / "recon.png"
    assert plot_cli.main(["recon", ckpt, str(clip), "--out", str(out), "--frames", "128"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eat_figure_from_a_checkpoint_and_its_log(tmp_path):
    pytest.importorskip("matplotlib")
    from test_embed import save_fake

    ckpt, _ = save_fake(tmp_path / "eat.pt", "eat")
    log = tmp_path / "eat.log"
    log.write_text("".join(
        f"[2026-12-07 02:42:4{i},055][train_inner][INFO] - epoch 001:  5 / 5 loss={7 - i}, frame_loss={4 - i / 2}, "
        f"utterance_loss=2.0, target_var={1 - i / 10}, pred_var=0.5, ema_decay=0.9998, num_updates={5 * (i + 1)}\n"
        for i in range(3)))
    assert plot_cli.read_log(str(log))["train"][2]["target_var"] == 0.8
    out = tmp_path / "eat.png"
    assert plot_cli.main(["eat", ckpt, str(log), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_pretraining_writes_reconstruction_images_to_tensorboard(tmp_path):
    """common.tensorboard_logdir set: every validation writes the first clip's reconstruction (a PNG image) under
    <logdir>/valid_images, and maeast-plot reads the scalars of the same folder."""
    pytest.importorskip("fairseq")
    pytest.importorskip("matplotlib")
    import os
    import subprocess
    import sys

    from conftest import REPO, console, run_cli
    from tensorboardX.proto import event_pb2

    from maeast_fairseq.data.synthetic import make_corpus

    make_corpus(str(tmp_path / "audio"), 8, seed=0, rates=(16000,), kinds=("tone", "chirp"))
    subprocess.run([sys.executable, "-m", "manifests", str(tmp_path / "audio"), "--dest", str(tmp_path / "data"),
                    "--ext", "wav", "--valid-percent", "0.25", "--seed", "1"], check=True, capture_output=True)
    tb = tmp_path / "tb"
    run_cli([console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples", "pretrain"),
             "--config-name", "mae_ast_patch_tiny", f"task.data={tmp_path / 'data'}",
             f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}",
             "optimization.max_update=4", f"common.tensorboard_logdir={tb}"], tmp_path)
    images = []
    for path in sorted((tb / "valid_images").glob("events.out.tfevents.*")):
        for data in plot_cli._tfrecords(str(path)):
            event = event_pb2.Event()
            event.ParseFromString(data)
            images += [(event.step, v.tag, v.image.encoded_image_string[:8]) for v in event.summary.value
                       if v.HasField("image")]
    assert images and all(tag == "reconstruction" and png == b"\x89PNG\r\n\x1a\n" for _, tag, png in images)
    # one image per validation (6 training clips at batch 8: an epoch, and a validation, per update), at its update
    run = plot_cli.read_tensorboard(str(tb))
    assert sorted(step for step, _, _ in images) == [r["num_updates"] for r in run["valid"]] == [1, 2, 3, 4]
