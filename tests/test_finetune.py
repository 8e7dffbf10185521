"""Fine-tuning: the maeast_classification task / maeast_classifier model / criterion through fairseq-hydra-train,
maeast-predict, the configs in examples/finetune, and the pure-torch recipe pieces (layer decay, strides, mixup,
SpecAugment, labels)."""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import BLOCK_FAIRSEQ, REPO, console, fairseq_env, run_cli, tiny_core, tiny_kwargs

from maeast_fairseq.checkpoint import classifier_from_pretrained
from maeast_fairseq.core.augment import mixup, spec_augment
from maeast_fairseq.core.classifier import (
    AudioClassifier,
    ClassifierConfig,
    apply_patch_strides,
    configure_encoder,
    layer_scales,
    param_groups,
    tag_parameters,
)

FT_DIR = os.path.join(REPO, "examples", "finetune")
CONFIGS = sorted(glob.glob(os.path.join(FT_DIR, "*.yaml")))
TINY = [c for c in CONFIGS if c.endswith("_tiny.yaml")]
VALID = re.compile(r"valid on 'valid' subset \| loss ([0-9.]+)(.*?)num_updates (\d+)")
KINDS = ("tone", "chirp", "noise", "clicks")
FAMILY = {"tone": "tonal", "chirp": "tonal", "noise": "noisy", "clicks": "noisy"}


def env():
    e = fairseq_env()
    # tiny models: one thread is as fast, and immune to thread oversubscription when the CPU is shared
    e["OMP_NUM_THREADS"] = "1"
    return e


def run(cmd, cwd):
    return run_cli(cmd, cwd, env())


def valid_lines(log):
    """[(num_updates, {metric: value})] of every validation."""
    rows = []
    for loss, rest, updates in VALID.findall(log):
        values = {"loss": float(loss)}
        values.update({k: float(v) for k, v in re.findall(r"\| (accuracy|mAP) ([0-9.]+)", "|" + rest)})
        rows.append((int(updates), values))
    return rows


def hydra(config, data, save, tmp, *overrides):
    return [console("fairseq-hydra-train"), "--config-dir", FT_DIR, "--config-name", config, f"task.data={data}",
            f"checkpoint.save_dir={save}", f"hydra.run.dir={tmp / 'hydra'}", *overrides]


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """48 clips of 16 kHz, four kinds (12 each), 36 train / 12 valid, labels from the folder names; plus a
    multi-label twin (kind + family: tonal / noisy) sharing the manifests."""
    from maeast_fairseq.data.synthetic import make_corpus

    root = tmp_path_factory.mktemp("labelled")
    make_corpus(str(root / "audio"), 48, seed=0, rates=(16000,), kinds=KINDS)
    subprocess.run([sys.executable, "-m", "manifests", str(root / "audio"), "--dest", str(root / "data"), "--ext",
                    "wav", "--valid-percent", "0.25", "--seed", "1", "--labels-from", "parent"],
                   check=True, capture_output=True)
    ml = root / "data_ml"
    ml.mkdir()
    for split in ("train", "valid"):
        shutil.copy(root / "data" / f"{split}.tsv", ml / f"{split}.tsv")
        kinds = (root / "data" / f"{split}.lbl").read_text().split()
        (ml / f"{split}.lbl").write_text("".join(f"{k},{FAMILY[k]}\n" for k in kinds))
    (ml / "labels.txt").write_text("\n".join(sorted(KINDS) + ["noisy", "tonal"]) + "\n")
    return root


@pytest.fixture(scope="module")
def pretrained(labelled, tmp_path_factory):
    """A tiny MAE-AST patch model pretrained for 20 updates on the (unlabelled use of the) same clips."""
    pytest.importorskip("fairseq")
    tmp = tmp_path_factory.mktemp("pretrain")
    run([console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples", "pretrain"),
         "--config-name", "mae_ast_patch_tiny", f"task.data={labelled / 'data'}", f"checkpoint.save_dir={tmp / 'ckpt'}",
         f"hydra.run.dir={tmp / 'hydra'}", "optimization.max_update=20"], cwd=tmp)
    return tmp / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def finetuned(labelled, pretrained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    log = run(hydra("small_data_tiny", labelled / "data", tmp / "ckpt", tmp, f"model.model_path={pretrained}"), tmp)
    return log, tmp / "ckpt"


# ------------------------------------------------------------------------------------------- through fairseq
@pytest.mark.slow
def test_finetune_beats_chance_by_30_points(finetuned):
    log, ckpt = finetuned
    rows = valid_lines(log)
    assert rows and rows[-1][0] == 60, log[-3000:]
    final = rows[-1][1]["accuracy"]
    assert final >= 25 + 30, f"valid accuracy {final} (chance 25): {[r[1] for r in rows]}"
    assert "optimizer groups" in log  # layer decay 0.75 + no-decay group through the composite optimizer
    state = torch.load(ckpt / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    cfg = state["cfg"]
    # self-contained: encoder config, label list, and the front end copied from the pretrained checkpoint
    assert cfg["model"]["encoder_name"] == "mae_ast" and cfg["model"]["encoder_cfg"]["embed_dim"] == 64
    assert cfg["model"]["class_names"] == sorted(KINDS)
    assert cfg["task"]["window_type"] == "povey" and cfg["task"]["norm"] == "none"
    assert cfg["model"]["frontend"]["window_type"] == "povey" and cfg["model"]["frontend"]["target_frames"] == 256
    assert not any(k.startswith("encoder.decoder") for k in state["model"])


@pytest.mark.slow
def test_predict_cli_prints_top_labels(finetuned, labelled, tmp_path):
    _, ckpt = finetuned
    root = (labelled / "data" / "valid.tsv").read_text().splitlines()[0]
    clips = [os.path.join(root, line.split("\t")[0]) for line in
             (labelled / "data" / "valid.tsv").read_text().splitlines()[1:3]]
    # the checkpoint alone is enough: no data folder, no pretrained checkpoint, no fairseq
    code = BLOCK_FAIRSEQ + ("from maeast_fairseq.cli.predict import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt / "checkpoint_best.pt"), *clips, "--top", "2",
                           "--json", str(tmp_path / "pred.json")], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == clips[0] and lines[3] == clips[1], proc.stdout
    for line in lines[1:3] + lines[4:6]:
        label, prob = line.split()
        assert label in KINDS and 0.0 <= float(prob) <= 1.0
    assert float(lines[1].split()[1]) >= float(lines[2].split()[1])  # sorted


@pytest.mark.slow
def test_fairseq_validate_and_the_predict_report_agree(finetuned, labelled, tmp_path):
    """fairseq-validate scores a held-out split of a fine-tuned checkpoint (no InterpolationResolutionError without
    --arch), and maeast-predict's report on the same manifest gives the same accuracy (truncated as in validation)."""
    from maeast_fairseq.cli.predict import main as predict_main

    train_log, ckpt = finetuned
    # the layer-decay groups are logged by name (group and lr scale), not by fairseq's md5 of their overrides
    assert re.search(r"lr_default_x0\.\d+ ", train_log) and not re.search(r"lr_[0-9a-f]{32}", train_log)
    log = run([console("fairseq-validate"), str(labelled / "data"), "--user-dir", os.path.join(REPO, "maeast_fairseq"),
               "--task", "maeast_classification", "--path", str(ckpt / "checkpoint_best.pt"), "--valid-subset",
               "valid", "--batch-size", "8"], tmp_path)
    validated = float(re.search(r"valid on 'valid' subset \| loss [0-9.]+ \| accuracy ([0-9.]+)", log).group(1))
    assert predict_main([str(ckpt / "checkpoint_best.pt"), str(labelled / "data" / "valid.tsv"), "--long",
                         "truncate", "--out", str(tmp_path / "report")]) == 0
    import json

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert round(100 * report["value"], 2) == validated, log[-2000:]


@pytest.mark.slow
def test_multi_label_runs_and_logs_map(labelled, pretrained, tmp_path):
    log = run(hydra("audioset20k_tiny", labelled / "data_ml", tmp_path / "ckpt", tmp_path,
                    f"model.model_path={pretrained}", "optimization.max_update=20",
                    "checkpoint.save_interval_updates=20", "dataset.validate_interval_updates=20"), tmp_path)
    rows = valid_lines(log)
    assert rows and all("mAP" in values for _, values in rows), log[-3000:]
    assert 0.0 <= rows[-1][1]["mAP"] <= 100.0
    assert "accuracy" not in rows[-1][1]
    assert (tmp_path / "ckpt" / "checkpoint_best.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["esc50_tiny", "speech_commands_tiny"])
def test_tiny_recipe_trains(name, labelled, pretrained, tmp_path):
    log = run(hydra(name, labelled / "data", tmp_path / "ckpt", tmp_path, f"model.model_path={pretrained}",
                    "optimization.max_update=3", "common.log_interval=1"), tmp_path)
    assert re.findall(r"train_inner.*num_updates=(\d+)", log) == ["1", "2", "3"], log[-3000:]
    assert valid_lines(log) and (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


# --------------------------------------------------------------------------------------------------- configs
def _keys(node, prefix=""):
    out = set()
    for k, v in node.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + ".")
    return out


def test_every_finetune_config_has_a_tiny_twin_with_the_same_layout():
    from omegaconf import OmegaConf

    full = [c for c in CONFIGS if c not in TINY]
    assert {os.path.basename(c) for c in full} >= {"esc50.yaml", "speech_commands.yaml", "audioset20k.yaml",
                                                    "small_data.yaml"}
    for path in full:
        twin = path[:-5] + "_tiny.yaml"
        assert twin in TINY, twin
        a = OmegaConf.to_container(OmegaConf.load(path))
        b = OmegaConf.to_container(OmegaConf.load(twin))
        assert _keys(a) == _keys(b), (path, _keys(a) ^ _keys(b))
        assert b["dataset"]["batch_size"] == 8 and b["dataset"]["num_workers"] == 0
        assert b["optimization"]["max_update"] <= 100 and b["common"]["fp16"] is False


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_fields_exist(path):
    pytest.importorskip("fairseq")
    import dataclasses

    from omegaconf import OmegaConf

    from maeast_fairseq.criterions.classification import ClassificationCriterionConfig
    from maeast_fairseq.models.classifier import ClassifierModelConfig
    from maeast_fairseq.tasks.classification import ClassificationTaskConfig

    cfg = OmegaConf.to_container(OmegaConf.load(path))
    for section, dc in (("task", ClassificationTaskConfig), ("model", ClassifierModelConfig),
                        ("criterion", ClassificationCriterionConfig)):
        names = {f.name for f in dataclasses.fields(dc)} | {"_name"}
        assert set(cfg[section]) <= names, (section, set(cfg[section]) - names)
    assert cfg["model"]["_name"] == "maeast_classifier" and cfg["task"]["_name"] == "maeast_classification"
    groups = cfg["optimizer"]["groups"]
    assert cfg["optimizer"]["_name"] == "composite" and cfg["lr_scheduler"] == "pass_through"
    assert ("no_decay" in groups) == bool(cfg["model"].get("no_decay_group"))


# --------------------------------------------------------------------------------------- pure-torch pieces
def tiny_mae_ast(layers=3):
    return tiny_core("mae_ast", seed=None, encoder_layers=layers)  # weights from the global RNG as it stands


def classifier(core, name="mae_ast", **kw):
    core.remove_pretraining_modules()
    return AudioClassifier(ClassifierConfig(num_classes=5, encoder_name=name, **kw), core)


def test_layer_decay_rules():
    model = classifier(tiny_mae_ast(3), layer_decay=0.5)
    blocks = layer_scales(model, model.encoder, 0.5, "blocks_only")
    beit = layer_scales(model, model.encoder, 0.5, "beit")
    for i in range(3):  # block i of L=3: 0.5^(3-i) under both rules
        assert blocks[f"encoder.encoder.blocks.{i}.attn.qkv.weight"] == 0.5 ** (3 - i)
        assert beit[f"encoder.encoder.blocks.{i}.ffn.fc2.bias"] == 0.5 ** (3 - i)
    for stem in ("encoder.patch_embed.proj.weight", "encoder.encoder.input_norm.weight"):
        assert blocks[stem] == 1.0  # EAT: the stem keeps the full lr (decision D14)
        assert beit[stem] == 0.5 ** 4  # BEiT: the stem is layer 0 -> decay^(L+1)
    for head in ("head.weight", "head.bias", "head_norm.weight"):
        assert blocks[head] == beit[head] == 1.0
    assert model.lr_scales() == blocks


def test_layer_decay_on_eat_keeps_stem_and_cls_at_one():
    eat = pytest.importorskip("maeast_fairseq.core.eat")
    core = eat.Eat(eat.EatConfig(encoder_layers=2, embed_dim=32, ffn_dim=128, num_heads=4, decoder_embed_dim=32,
                                 decoder_layers=1, clones=2, average_top_k_layers=2))
    model = classifier(core, "eat", layer_decay=0.65)
    assert model.pooling == "cls"
    scales = model.lr_scales()
    assert scales["encoder.encoder.cls_token"] == scales["encoder.encoder.patch_embed.proj.weight"] == 1.0
    assert scales["encoder.encoder.transformer.blocks.0.attn.qkv.weight"] == pytest.approx(0.65 ** 2)
    assert scales["encoder.encoder.transformer.blocks.1.attn.qkv.weight"] == pytest.approx(0.65)
    assert not any(k.startswith(("encoder.teacher", "encoder.decoder")) for k in scales)


def test_param_groups_and_fairseq_tags():
    model = classifier(tiny_mae_ast(2), layer_decay=0.5)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([2.5e-4, 5e-4, 1e-3])
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    tag_parameters(model, model.lr_scales(), no_decay_group=True)
    qkv = model.encoder.encoder.blocks[0].attn.qkv
    assert qkv.weight.optim_overrides == {"optimizer": {"lr_scale": 0.25}}
    assert qkv.bias.param_group == "no_decay" and not hasattr(qkv.weight, "param_group")
    assert qkv.weight.optim_overrides is not qkv.bias.optim_overrides  # fairseq writes into these dicts
    assert not hasattr(model.head.weight, "optim_overrides")  # scale 1: fairseq's plain "default" group


def test_optimizer_that_ignores_the_groups_is_refused():
    pytest.importorskip("fairseq")
    from maeast_fairseq.tasks.classification import check_optimizer_groups

    model = classifier(tiny_mae_ast(2), layer_decay=0.5)
    tag_parameters(model, model.lr_scales(), no_decay_group=False)

    class OneGroup:
        param_groups = [{"params": list(model.parameters())}]

    with pytest.raises(ValueError, match="composite"):
        check_optimizer_groups(model, OneGroup())

    class Grouped:
        param_groups = [{"params": []}, {"params": []}, {"params": []}]

    check_optimizer_groups(model, Grouped())

    class FP16Wrapper:  # fairseq's FP16Optimizer over a composite optimizer: groups live in fp32_optimizer
        fp32_optimizer = Grouped()

        @property
        def param_groups(self):
            raise AttributeError("CompositeOptimizer has no param_groups")

    check_optimizer_groups(model, FP16Wrapper())


def test_regularisation_overrides():
    core = tiny_mae_ast(3)
    core.remove_pretraining_modules()
    configure_encoder(core, dropout=0.2, attention_dropout=0.05, layerdrop=0.0, drop_path=0.1)
    stack = core.encoder
    assert [b.drop_path.p for b in stack.blocks] == pytest.approx([0.0, 0.05, 0.1])
    assert stack.layerdrop == 0.0 and all(b.dropout.p == 0.2 and b.attn.attention_dropout == 0.05
                                          for b in stack.blocks)
    assert core.decoder is None and core.reconstruction_head is None


def test_ssast_overlapping_patches_regrid_positions():
    ssast = pytest.importorskip("maeast_fairseq.core.ssast")
    core = ssast.Ssast(ssast.SsastConfig(encoder_layers=1, embed_dim=32, ffn_dim=64, num_heads=4,
                                         target_frames=256))  # pretraining grid: 16 time x 8 freq
    core.remove_pretraining_modules()
    old = core.positions.table.detach().clone()
    assert apply_patch_strides(core, 16, 16, target_frames=256) is False  # same strides and grid: nothing to do
    # time stride 8, same frequency stride: fewer time patches (15 < 16) -> the SSAST centre crop, exactly
    assert apply_patch_strides(core, 8, 0, target_frames=128)
    assert core.positions.grid == (15, 8)
    grid = old[0, 2:].reshape(8, 16, -1)  # freq-major: (freq, time, D)
    start = 16 // 2 - 15 // 2
    assert torch.equal(core.positions.table[0, 2:].reshape(8, 15, -1), grid[:, start:start + 15])
    assert torch.equal(core.positions.table[0, :2], old[0, :2])  # CLS / DIST positions kept

    core = ssast.Ssast(ssast.SsastConfig(encoder_layers=1, embed_dim=32, ffn_dim=64, num_heads=4,
                                         target_frames=256))
    core.remove_pretraining_modules()
    apply_patch_strides(core, 10, 10, target_frames=128)  # SSAST fine-tuning: 12 x 12 overlapping patches
    assert core.positions.grid == (12, 12) and core.positions.table.requires_grad
    out = core.extract_features(torch.randn(2, 128, 128))
    assert out["x"].shape == (2, 144, 32)


def test_fixed_position_methods_refuse_a_new_frequency_stride():
    core = tiny_mae_ast(1)
    core.remove_pretraining_modules()
    with pytest.raises(ValueError, match="frequency stride"):
        apply_patch_strides(core, 10, 10, target_frames=128)
    assert apply_patch_strides(core, 8, 0, target_frames=128)  # time stride only: 15 x 8 tokens
    assert core.extract_features(torch.randn(1, 128, 128))["x"].shape == (1, 15 * 8, 32)


def test_mean_pooling_ignores_padding_and_cls_needs_a_cls_token():
    model = classifier(tiny_mae_ast(1)).eval()
    x = torch.randn(2, 64, 128)
    pad = torch.zeros(2, 64, dtype=torch.bool)
    pad[1, 32:] = True
    feats = model.encoder.extract_features(x, pad)
    pooled = model.pool(feats)
    assert torch.allclose(pooled[1], feats["x"][1, :16].mean(0), atol=1e-6)  # 2 of 4 time patches x 8 freq
    alone = model.encoder.extract_features(x[1:, :32])
    assert torch.allclose(pooled[1], alone["x"][0].mean(0), atol=1e-5)  # same as the clip alone
    with pytest.raises(ValueError, match="CLS"):
        classifier(tiny_mae_ast(1), pooling="cls").pool(feats)


def test_mixup_is_batch_mode_and_keeps_label_mass():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 8)
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    pad = torch.zeros(4, 10, dtype=torch.bool)
    pad[0, 6:] = True
    pad[3, 8:] = True
    mx, my, mpad, lam = mixup(x, y, alpha=0.8, prob=1.0, frame_padding=pad)
    assert 0.0 < lam < 1.0
    assert torch.allclose(mx, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(my, lam * y + (1 - lam) * y.flip(0)) and torch.allclose(my.sum(1), torch.ones(4))
    assert torch.equal(mpad, pad & pad.flip(0))  # padding only where both clips are padding
    assert mixup(x, y, alpha=0.8, prob=0.0)[3] == 1.0 and mixup(x, y, alpha=0.0)[0] is x


def test_spec_augment_masks_are_iid_bounded_and_stay_in_valid_frames():
    torch.manual_seed(0)
    b, t, f = 64, 100, 40
    x = torch.ones(b, t, f)
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[:, 60:] = True
    y = spec_augment(x, 0.25, 0.2, pad)
    freq_masked = (y == 0).all(dim=1)  # (B, F) bins masked over all frames
    time_masked = (y == 0).all(dim=2)  # (B, T)
    assert int(freq_masked.sum(1).max()) <= 0.25 * f and int(time_masked.sum(1).max()) <= 0.2 * 60
    assert not time_masked[:, 60:].any()  # time masks only inside the 60 valid frames
    assert len({tuple(r.nonzero().flatten().tolist()) for r in freq_masked}) > 10  # one draw per clip
    assert torch.equal(spec_augment(x, 0.0, 0.0), x)


def test_checkpoint_mismatch_lists_the_keys():
    core = tiny_mae_ast(2)
    state = {"cfg": {"model": {"_name": "mae_ast", "encoder_layers": 3, "embed_dim": 32, "ffn_dim": 64,
                               "num_heads": 4, "decoder_layers": 1, "decoder_embed_dim": 32, "decoder_ffn_dim": 64,
                               "decoder_heads": 4}},
             "model": core.state_dict()}
    with pytest.raises(RuntimeError, match=r"missing encoder\.blocks\.2"):
        classifier_from_pretrained(ClassifierConfig(num_classes=2), state, "pre.pt")
    state["cfg"]["model"]["encoder_layers"] = 2
    model = classifier_from_pretrained(ClassifierConfig(num_classes=2, drop_path=0.1), state, "pre.pt")
    assert torch.equal(model.encoder.encoder.blocks[1].ffn.fc1.weight, core.encoder.blocks[1].ffn.fc1.weight)
    assert model.cfg.encoder_name == "mae_ast" and model.encoder.encoder.blocks[1].drop_path.p == 0.1


# ---------------------------------------------------------------------------------------------------- labels
def _dataset(data, split="train", **kw):
    pytest.importorskip("fairseq")
    from maeast_fairseq.data.labelled_dataset import LabelledFbankDataset
    from maeast_fairseq.data.manifest import read_label_list
    from maeast_fairseq.frontend import FrontendConfig

    names = read_label_list(os.path.join(data, "labels.txt"))
    return LabelledFbankDataset(os.path.join(data, f"{split}.tsv"), FrontendConfig(target_frames=256),
                                label_path=os.path.join(data, f"{split}.lbl"), class_names=names, min_frames=16, **kw)


def test_targets_are_multi_hot_rows(labelled):
    ds = _dataset(labelled / "data_ml", multi_label=True)
    batch = ds.collater([ds[i] for i in range(5)])
    names = (labelled / "data_ml" / "labels.txt").read_text().split()
    lines = (labelled / "data_ml" / "train.lbl").read_text().splitlines()
    for row, line in zip(batch["target"], lines[:5]):
        assert {names[i] for i in row.nonzero().flatten().tolist()} == set(line.split(","))
    assert batch["target"].dtype == torch.float32 and batch["target"].sum(1).tolist() == [2.0] * 5


def test_label_errors_name_file_and_line(labelled, tmp_path):
    from maeast_fairseq.data.manifest import ManifestError

    data = tmp_path / "bad"
    shutil.copytree(labelled / "data", data)
    lines = (data / "train.lbl").read_text().splitlines()
    lines[4] = "tone,chirp"
    (data / "train.lbl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"train\.lbl: line 5: 2 labels"):
        _dataset(data)
    _dataset(data, multi_label=True)  # fine as multi-label data
    lines[4] = "whistle"
    (data / "train.lbl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"train\.lbl: line 5: label\(s\) 'whistle' not in"):
        _dataset(data, multi_label=True)


def test_noise_augmentation_keeps_padding_a_suffix(labelled):
    ds = _dataset(labelled / "data", noise_aug=True)
    plain = _dataset(labelled / "data")
    items = [ds[i] for i in range(4)]
    noisy, clean = ds.collater(items), plain.collater(items)
    pad = clean["net_input"]["frame_padding"]
    assert torch.equal(noisy["net_input"]["frame_padding"], pad)
    x, y = noisy["net_input"]["fbank"], clean["net_input"]["fbank"]
    assert torch.equal(x[pad], y[pad])  # padded frames untouched
    assert not torch.equal(x, y)
    again = ds.collater(items)["net_input"]["fbank"]
    assert torch.equal(x, again)  # a function of (seed, epoch, clip id)


TINY_CORES = {
    "mae_ast": tiny_kwargs("mae_ast"),
    "ssast": tiny_kwargs("ssast", target_frames=256),
    "eat": tiny_kwargs("eat", embed_dim=32, ffn_dim=128, decoder_embed_dim=32, decoder_layers=1, clones=2),
}


@pytest.mark.parametrize("name", sorted(TINY_CORES))
def test_every_method_fine_tunes_from_its_checkpoint(name):
    """Build from a pretrained state of each registered method, train a step, save, rebuild from the fine-tuned
    state alone (predict path), and re-fine-tune that checkpoint with a new head."""
    from maeast_fairseq.checkpoint import CORE_MODELS, build_core, classifier_from_state

    if name not in CORE_MODELS:
        pytest.skip(f"{name} is not registered in maeast_fairseq.checkpoint.CORE_MODELS yet")
    torch.manual_seed(0)
    core = build_core(name, TINY_CORES[name])
    pre = {"cfg": {"model": dict(TINY_CORES[name], _name=name)}, "model": core.state_dict()}
    strides = (10, 10) if name == "ssast" else (0, 0)
    cfg = ClassifierConfig(num_classes=3, target_frames=128, drop_path=0.1, mixup_alpha=0.8, specaug_freq=0.2,
                           specaug_time=0.2, layer_decay=0.65, patch_stride_time=strides[0],
                           patch_stride_freq=strides[1], class_names=["a", "b", "c"])
    model = classifier_from_pretrained(cfg, pre, f"{name}.pt")
    assert model.pooling == ("cls" if name == "eat" else "mean")
    x, y = torch.randn(4, 128, 128), torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    pad = torch.zeros(4, 128, dtype=torch.bool)
    pad[2, 90:] = True
    out = model.train()(x, pad, y)
    torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], out["target"]).backward()
    assert model.head.weight.grad is not None and all(p.grad is not None for p in model.encoder.parameters()
                                                      if p.requires_grad)
    saved = {"cfg": {"model": dict(vars(cfg), _name="maeast_classifier")}, "model": model.state_dict()}
    rebuilt, _ = classifier_from_state(saved, "ft.pt")
    model.eval()
    assert torch.allclose(rebuilt(x, pad)["logits"], model(x, pad)["logits"], atol=1e-5)
    again = classifier_from_pretrained(ClassifierConfig(num_classes=5, target_frames=128), saved, "ft.pt")
    enc_a, enc_b = again.encoder.state_dict(), model.encoder.state_dict()
    assert enc_a.keys() == enc_b.keys() and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert again.head.out_features == 5
