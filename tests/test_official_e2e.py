"""End to end from the official SSAST and MAE-AST files: the loader, ``maeast-convert``, ``maeast-embed``,
``maeast-evaluate``, HEAR, s3prl, a few fine-tuning updates and a few further-pretraining updates (the EAT files:
``test_official_eat.py``)."""
import json
import os
import re

import numpy as np
import pytest
import torch
from conftest import REPO, console, run_cli

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official")
FILES = {  # fixture -> (our model name, embedding width, tokens per time step, example pretraining config)
    "ssast_patch_tiny2.pth": ("ssast", 192, 8, "ssast_patch_tiny"),
    "ssast_frame_tiny2.pth": ("ssast", 192, 1, "ssast_frame_tiny"),
    "maeast_chunk_patch_2L.pt": ("mae_ast", 64, 8, "mae_ast_patch_tiny"),
    "maeast_random_frame_2L.pt": ("mae_ast", 64, 1, "mae_ast_frame_tiny"),
}
#: the fixtures' sizes, given to the tiny example configs (the MAE-AST ones have them already)
SIZES = {"ssast": ["model.embed_dim=192", "model.ffn_dim=768", "model.num_heads=3"], "mae_ast": []}


def path_of(name):
    return os.path.join(FIXTURES, name)


def test_load_pretrained_reads_official_files_with_their_front_end():
    from maeast_fairseq.checkpoint import load_pretrained

    for name, (model_name, dim, _, _) in FILES.items():
        pre = load_pretrained(path_of(name))
        assert pre.name == model_name and pre.embed_dim == dim
        official = pre.load_report["official"]
        assert official["family"] == model_name and official["dropped"] and official["notes"]
        if model_name == "ssast":
            assert (pre.frontend.window_type, pre.frontend.norm, pre.frontend.target_frames) == (
                "hanning", "dataset", 256)
            assert pre.frontend.subtract_waveform_mean
        else:
            assert (pre.frontend.window_type, pre.frontend.norm, pre.frontend.length_policy) == (
                "povey", "none", "crop_to_shortest")
            assert not pre.frontend.subtract_waveform_mean
        # the front end can be overridden by the caller
        from dataclasses import replace

        other = replace(pre.frontend, window_type="hanning" if pre.frontend.window_type == "povey" else "povey")
        assert load_pretrained(path_of(name), frontend=other).frontend == other


def test_convert_cli_writes_our_checkpoint_and_the_export_with_equal_embeddings(tmp_path, capsys):
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.cli import convert as convert_cli

    audio = [torch.randn(16000 * 2) * 0.1]
    for name, (model_name, _, _, _) in FILES.items():
        ours, export = tmp_path / f"{name}.ours.pt", tmp_path / f"{name}.export"
        assert convert_cli.main([path_of(name), str(ours)]) == 0
        printed = capsys.readouterr().out
        assert f"family: {model_name}" in printed and "front end:" in printed and "dropped (6):" in printed
        outputs = [ours]
        if name in ("ssast_patch_tiny2.pth", "maeast_chunk_patch_2L.pt"):  # the export path once per family
            assert convert_cli.main([path_of(name), str(export), "--safetensors"]) == 0
            capsys.readouterr()
            outputs.append(export)
        direct = load_pretrained(path_of(name)).embed(audio)["clip"]
        for converted in outputs:
            again = load_pretrained(str(converted)).embed(audio)["clip"]
            torch.testing.assert_close(again, direct, rtol=0, atol=0)  # same weights, same computation
    # the converted checkpoint keeps every converted tensor (decoder / heads too) for further pretraining
    state = torch.load(tmp_path / "maeast_chunk_patch_2L.pt.ours.pt", weights_only=True)
    assert "decoder.blocks.0.attn.qkv.weight" in state["model"] and state["cfg"]["model"]["_name"] == "mae_ast"
    assert convert_cli.main([path_of("ssast_patch_tiny2.pth"), str(tmp_path / "x.pt"), "--ema"]) != 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_embed_cli_hear_and_s3prl_from_official_files(name, clips, tmp_path):
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.cli import embed as embed_cli
    from maeast_fairseq.interop import hear
    from maeast_fairseq.interop.s3prl import S3prlUpstream

    model_name, dim, per_step, _ = FILES[name]
    torch.set_num_threads(1)
    out = tmp_path / "emb.npz"
    assert embed_cli.main([path_of(name), str(clips / "two"), "--out", str(out), "--device", "cpu"]) == 0
    emb = np.load(out, allow_pickle=False)
    assert emb["clip"].shape == (2, dim) and np.isfinite(emb["clip"]).all()
    pre = load_pretrained(path_of(name))
    model = hear.load_model(path_of(name))
    audio = torch.randn(2, 16000) * 0.1
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, pre.embed(list(audio))["clip"], atol=1e-5, rtol=0)
    up = S3prlUpstream(path_of(name)).eval()
    with torch.no_grad():
        hs = up(list(audio))["hidden_states"]
    assert len(hs) == 3 and hs[0].shape[-1] == per_step * dim  # stack input + 2 layers
    assert up.get_downsample_rates("hidden_states") == pre.downsample_rate


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_evaluate_cli_from_official_files(name, clips, tmp_path):
    from maeast_fairseq.cli import evaluate as evaluate_cli

    model_name, dim, per_step, _ = FILES[name]
    out = tmp_path / "superb.json"
    rc = evaluate_cli.main([path_of(name), "--data", str(clips / "data"), "--test", "valid", "--steps", "10",
                            "--seeds", "0", "--cache", str(tmp_path / "cache"), "--json", str(out), "--quiet",
                            "--threads", "1", "--device", "cpu"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert (result["upstream"]["model"], result["upstream"]["layers"], result["upstream"]["dim"]) == (
        model_name, 3, per_step * dim)
    assert result["num_classes"] == 2


def hydra_train(args, cwd):
    return run_cli([console("fairseq-hydra-train"), *args, f"hydra.run.dir={cwd / 'hydra'}"], cwd)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_finetune_a_few_updates_from_official_files(name, clips, tmp_path):
    pytest.importorskip("fairseq")
    from maeast_fairseq.official.reader import read_raw

    model_name = FILES[name][0]
    log = hydra_train(["--config-dir", os.path.join(REPO, "examples", "finetune"), "--config-name", "small_data_tiny",
                       f"task.data={clips / 'data'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
                       f"model.model_path={path_of(name)}", "optimization.max_update=2", "common.log_interval=1",
                       "dataset.disable_validation=true"],
                      tmp_path)
    assert f"loaded the {model_name} encoder from {path_of(name)}" in log
    assert "front end copied from" in log
    state = read_raw(str(tmp_path / "ckpt" / "checkpoint_last.pt"))
    assert state["cfg"]["model"]["encoder_name"] == model_name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILES))
def test_pretraining_continues_from_a_converted_official_file(name, clips, tmp_path):
    """The documented command: convert, then ``checkpoint.finetune_from_model=`` (fresh optimizer, schedule,
    meters and data iterator; our own run directory's checkpoint_last.pt takes over once it exists)."""
    pytest.importorskip("fairseq")
    from maeast_fairseq.cli import convert as convert_cli
    from maeast_fairseq.official import read_official
    from maeast_fairseq.official.reader import read_raw

    model_name, _, _, config = FILES[name]
    converted = tmp_path / "converted.pt"
    assert convert_cli.main([path_of(name), str(converted)]) == 0
    log = hydra_train(["--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", config,
                       f"task.data={clips / 'data'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
                       f"checkpoint.finetune_from_model={converted}", "optimization.max_update=2",
                       "common.log_interval=1", "checkpoint.save_interval_updates=0", "dataset.disable_validation=true",
                       *SIZES[model_name]], tmp_path)
    assert re.search(r"num_updates[= ]2\b", log), log[-2000:]
    start = read_official(path_of(name)).state
    after = read_raw(str(tmp_path / "ckpt" / "checkpoint_last.pt"))["model"]
    assert set(after) == set(start)
    # started from the official weights: 2 small updates move them by far less than their own scale
    for key in ("patch_embed.proj.weight", "encoder.blocks.1.ffn.fc2.weight"):
        assert float((after[key] - start[key]).norm() / start[key].norm()) < 0.1, key
