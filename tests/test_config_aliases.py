"""Renamed config fields: old checkpoints and yamls (EAT's depth / mlp_ratio / layerdrop / decoder_dim, the
classifier's layerdrop, MAE-AST's mask_type 'chunk') still load, with a warning naming the new key."""
import dataclasses
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from maeast_fairseq.core.classifier import ClassifierConfig
from maeast_fairseq.core.config_aliases import renamed_keys, upgrade_config
from maeast_fairseq.core.eat import Eat, EatConfig
from maeast_fairseq.core.mae_ast import MaeAst, MaeAstConfig
from maeast_fairseq.core.ssast import SsastConfig
from maeast_fairseq.frontend import FrontendConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGGER = "maeast_fairseq.core.config_aliases"
#: the old EAT names, as the yamls and checkpoints written before the renames hold them
OLD_EAT = {"encoder_layers": "depth", "encoder_layerdrop": "layerdrop", "decoder_embed_dim": "decoder_dim"}


def old_eat_dict(cfg: EatConfig) -> dict:
    """``cfg`` as a config dict under the old EAT names (``mlp_ratio`` instead of ``ffn_dim``)."""
    d = dataclasses.asdict(cfg)
    for new, old in OLD_EAT.items():
        d[old] = d.pop(new)
    d["mlp_ratio"] = d.pop("ffn_dim") / d["embed_dim"]
    return d


def tiny_eat_cfg() -> EatConfig:
    return EatConfig(embed_dim=32, encoder_layers=2, ffn_dim=128, num_heads=4, decoder_embed_dim=16,
                     decoder_layers=1, decoder_groups=4, average_top_k_layers=2, clones=2, encoder_layerdrop=0.1)


def test_the_three_configs_share_the_encoder_names():
    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (SsastConfig, MaeAstConfig, EatConfig)}
    for field in ("encoder_layers", "embed_dim", "ffn_dim", "num_heads", "mask_ratio", "dropout", "attention_dropout"):
        assert all(field in n for n in names.values()), field
    for field in ("encoder_layerdrop", "decoder_layers", "decoder_embed_dim"):
        assert field in names[MaeAstConfig] and field in names[EatConfig], field
    # no config still has a field under an old name
    for cls, n in names.items():
        assert not n & set(renamed_keys(cls)), cls


def test_old_eat_names_are_renamed_with_a_warning(caplog):
    cfg = tiny_eat_cfg()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        values = upgrade_config(EatConfig, old_eat_dict(cfg), "old.yaml")
    assert EatConfig(**values) == cfg
    for old, new in [*((o, n) for n, o in OLD_EAT.items()), ("mlp_ratio", "ffn_dim")]:
        assert any(f"'{old}' was renamed '{new}'" in r.getMessage() and "old.yaml" in r.getMessage()
                   for r in caplog.records), old
    # mlp_ratio is converted at the config's own embed_dim (or the default one when the dict has none)
    assert upgrade_config(EatConfig, {"mlp_ratio": 4.0, "embed_dim": 1024})["ffn_dim"] == 4096
    assert upgrade_config(EatConfig, {"mlp_ratio": 4.0})["ffn_dim"] == 4 * EatConfig().embed_dim
    # a current dict passes unchanged and silently
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert upgrade_config(EatConfig, dataclasses.asdict(cfg)) == dataclasses.asdict(cfg)
    assert not caplog.records


def test_fairseq_model_configs_share_the_table():
    fairseq_models = pytest.importorskip("maeast_fairseq.models.eat")
    assert renamed_keys(fairseq_models.EatModelConfig)["depth"] == "encoder_layers"
    assert upgrade_config(fairseq_models.EatModelConfig, {"decoder_dim": 8}) == {"decoder_embed_dim": 8}


def test_old_and_new_name_with_different_values_is_refused():
    with pytest.raises(ValueError, match="'depth'.*'encoder_layers'.*keep only 'encoder_layers'"):
        upgrade_config(EatConfig, {"depth": 2, "encoder_layers": 3}, "mixed.yaml")
    assert upgrade_config(EatConfig, {"depth": 2, "encoder_layers": 2}) == {"encoder_layers": 2}


def test_classifier_layerdrop_and_mae_ast_chunk(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert upgrade_config(ClassifierConfig, {"layerdrop": 0.1}) == {"encoder_layerdrop": 0.1}
        assert upgrade_config(MaeAstConfig, {"mask_type": "chunk"}) == {"mask_type": "cluster"}
        assert upgrade_config(MaeAstConfig, {"mask_type": "random"}) == {"mask_type": "random"}
    assert sum("mask_type='chunk' was renamed mask_type='cluster'" in r.getMessage() for r in caplog.records) == 1
    # built directly (no dict to upgrade), the old value is an error that names the new one
    with pytest.raises(ValueError, match="'chunk' was renamed 'cluster'"):
        MaeAst(MaeAstConfig(mask_type="chunk", encoder_layers=1, embed_dim=16, ffn_dim=32, num_heads=2,
                            decoder_layers=1, decoder_embed_dim=16, decoder_ffn_dim=32, decoder_heads=2))


def test_old_checkpoint_loads_with_a_warning(tmp_path, caplog):
    from maeast_fairseq.checkpoint import load_pretrained

    torch.manual_seed(0)
    model = Eat(tiny_eat_cfg())
    task = dict(dataclasses.asdict(FrontendConfig()), target_frames=256)
    path = tmp_path / "old_eat.pt"
    torch.save({"cfg": {"model": dict(old_eat_dict(model.cfg), _name="eat"), "task": task},
                "model": model.state_dict(), "optimizer_history": []}, str(path))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pre = load_pretrained(str(path))
    assert pre.model.cfg == model.cfg
    state = pre.model.state_dict()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(state["encoder." + k], v)
    assert any("'depth' was renamed 'encoder_layers'" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


def test_old_model_config_node_is_upgraded_in_place():
    omegaconf = pytest.importorskip("omegaconf")
    pytest.importorskip("fairseq")
    from maeast_fairseq.fairseq_compat import upgrade_config_node

    node = omegaconf.OmegaConf.create({"model": {"_name": "eat", "depth": 2, "mlp_ratio": 2.0, "embed_dim": 16,
                                                 "patch_time": "${task.patch}"}, "task": {"patch": 16}})
    omegaconf.OmegaConf.set_struct(node, True)
    upgrade_config_node(EatConfig, node.model, "node")
    assert sorted(node.model.keys()) == ["_name", "embed_dim", "encoder_layers", "ffn_dim", "patch_time"]
    assert (node.model.encoder_layers, node.model.ffn_dim, node.model.patch_time) == (2, 32, 16)
    assert omegaconf.OmegaConf.to_container(node.model)["patch_time"] == "${task.patch}"  # left unresolved


def old_yaml(name: str, dest) -> str:
    """``examples/pretrain/<name>.yaml`` rewritten with the old names; returns its config name in ``dest``."""
    with open(os.path.join(REPO, "examples", "pretrain", f"{name}.yaml")) as f:
        text = f.read()
    renames = OLD_EAT.items() if name.startswith("eat") else [("mask_type: cluster", "mask_type: chunk")]
    for new, old in renames:
        text, n = re.subn(rf"^  {new}\b", f"  {old}", text, flags=re.M)
        assert n == 1, (name, new)
    if name.startswith("eat"):
        embed = int(re.search(r"^  embed_dim: (\d+)$", text, re.M).group(1))
        text, n = re.subn(r"^  ffn_dim: (\d+)$", lambda m: f"  mlp_ratio: {int(m.group(1)) / embed}", text,
                          flags=re.M)
        assert n == 1
    (dest / f"old_{name}.yaml").write_text(text)
    return f"old_{name}"


@pytest.mark.parametrize("name", ["eat_base_tiny", "mae_ast_patch_tiny"])
def test_old_yaml_builds_the_same_model_through_the_fairseq_task(name, tmp_path, caplog):
    """The path fairseq's checkpoint loaders take (and fairseq-hydra-train after add_defaults):
    task.build_model(cfg.model), where fairseq merges cfg.model into the model's dataclass."""
    pytest.importorskip("fairseq")
    from fairseq import tasks
    from omegaconf import OmegaConf

    import maeast_fairseq

    maeast_fairseq.register()  # what fairseq's user-dir import does: registrations + fairseq_compat

    (tmp_path / "data").mkdir()
    models = {}
    for config_name in (name, old_yaml(name, tmp_path)):
        folder = tmp_path if config_name.startswith("old_") else os.path.join(REPO, "examples", "pretrain")
        cfg = OmegaConf.load(os.path.join(folder, f"{config_name}.yaml"))
        cfg.task.data = str(tmp_path / "data")
        OmegaConf.set_struct(cfg, True)
        task = tasks.setup_task(cfg.task)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            models[config_name] = task.build_model(cfg.model)
        if config_name.startswith("old_"):
            assert caplog.records and all("was renamed" in r.getMessage() for r in caplog.records)
            # renamed in place: what fairseq saves in the checkpoint afterwards has the new names
            assert not set(cfg.model.keys()) & set(renamed_keys(type(models[config_name].cfg)))
        else:
            assert not caplog.records
    new, old = models.values()
    assert old.cfg == new.cfg
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}


@pytest.mark.slow
def test_old_yaml_trains_with_fairseq_hydra_train(tmp_path):
    pytest.importorskip("fairseq")
    from conftest import console, fairseq_env

    from maeast_fairseq.data.synthetic import make_corpus

    make_corpus(str(tmp_path / "audio"), 4, seed=0, rates=(16000,), kinds=("tone", "chirp"))
    subprocess.run([sys.executable, "-m", "manifests", str(tmp_path / "audio"), "--dest", str(tmp_path / "data"),
                    "--ext", "wav", "--valid-percent", "0.5", "--seed", "1"], check=True, capture_output=True,
                   cwd=REPO)
    name = old_yaml("eat_base_tiny", tmp_path)
    cmd = [console("fairseq-hydra-train"), "--config-dir", str(tmp_path), "--config-name", name,
           f"task.data={tmp_path / 'data'}", "optimization.max_update=1", "dataset.batch_size=2",
           f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=fairseq_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "config field 'depth' was renamed 'encoder_layers'" in out
    saved = torch.load(str(tmp_path / "ckpt" / "checkpoint_last.pt"), weights_only=False)["cfg"]["model"]
    assert saved["encoder_layers"] == 2 and "depth" not in saved and saved["ffn_dim"] == 256
