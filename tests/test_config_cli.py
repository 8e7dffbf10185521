"""``maeast-config``: every field of a config's task / model / criterion dataclass, with value, default, flag and
help; the yaml's own settings marked, keys that are no field reported."""
import dataclasses

import pytest

pytest.importorskip("fairseq")

from maeast_fairseq.cli import config as config_cli  # noqa: E402


def test_a_pretraining_yaml_lists_every_field_with_its_flag_and_help(capsys):
    from maeast_fairseq.models.mae_ast import MaeAstModelConfig

    assert config_cli.main(["mae_ast_frame"]) == 0
    out = capsys.readouterr().out
    # the flags the README names, each with its help string
    assert " * model.patch_time = 2   (default 16)\n      --patch-time   patch size in frames" in out
    assert " * task.window_type = 'povey'   (default 'hanning')\n      --window-type   fbank window" in out
    assert "\n      --mask-ratio   " in out
    for f in dataclasses.fields(MaeAstModelConfig):
        if not f.name.startswith("_"):
            assert f"model.{f.name} = " in out, f.name
    assert "criterion._name=masked_recon_nce" in out
    assert "task.seed = ${common.seed}\n      (no flag: follows ${common.seed})" in out


def test_a_finetuning_yaml_and_a_registered_name(capsys):
    assert config_cli.main(["small_data_tiny", "--section", "model"]) == 0
    out = capsys.readouterr().out
    assert "model._name=maeast_classifier" in out and "--layer-decay" in out and "task._name" not in out
    assert config_cli.main(["eat"]) == 0
    assert "model 'eat'" in capsys.readouterr().out


def test_unknown_yaml_keys_and_names_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  _name: mae_ast\n  mask_ration: 0.5\n")
    assert config_cli.main([str(bad)]) == 1
    assert "model.mask_ration: set by the yaml but not a field of MaeAstModelConfig" in capsys.readouterr().out
    assert config_cli.main(["no_such_thing"]) == 2
    assert "maeast-config --list" in capsys.readouterr().err


def test_params_names_the_paper_figure_and_counts_a_finetuning_yaml(capsys):
    """maeast-params: the figure a config reproduces (or none), and a fine-tuning yaml counted as encoder + head."""
    import os

    from conftest import REPO

    from maeast_fairseq.cli import params

    tiny = os.path.join(REPO, "examples", "pretrain", "mae_ast_patch_tiny.yaml")
    assert params.paper_figure(os.path.join(REPO, "examples", "pretrain", "eat_base.yaml")).startswith(
        "paper figure: EAT-base: 93M pretraining, 88M fine-tuning")
    assert params.paper_figure(tiny).startswith("paper figure: none (a tiny test config)")
    ft = os.path.join(REPO, "examples", "finetune", "esc50_tiny.yaml")
    assert params.main([ft, "--encoder", tiny, "--num-classes", "50"]) == 0
    out = capsys.readouterr().out
    model = params.build(params.read_model_cfg(tiny))
    model.remove_pretraining_modules()
    encoder = sum(p.numel() for p in model.parameters())
    d = model.cfg.embed_dim
    assert f"pretraining modules removed): {encoder:,} parameters" in out
    assert f"total {encoder + 2 * d + 50 * (d + 1):,}" in out
    assert params.main([ft]) == 0 and "give --encoder" in capsys.readouterr().out
