"""EAT's released checkpoint formats: conversion, equivalence with the official code, strictness, end to end.

The fixtures (``tests/fixtures/official/``) were saved by the official EAT code (fairseq 0.12.3) in the released
formats: ``eat_pretrain_tiny2.pt`` (``data2vec_multi``: student + decoder + ``_ema`` teacher) and
``eat_finetune_tiny2_5cls.pt`` (``mae_image_classification``: encoder + ``fc_norm`` + ``head``, 5 classes), both
2 blocks of width 64, 4 heads, 128 frames; ``*.refs.npz`` hold the official code's outputs on ``inputs.npz``.

Tolerance: ``rel(ours, ref) = max |ours - ref| / max |ref|`` must be below 1e-5. Both sides compute in float32
(unit roundoff u = 2^-24 = 6e-8). Each reduction of length K (patch projection K = 256, qkv / attention / output
projection K = 64, FFN K = 256) commits a relative error of order sqrt(K) u ~ 1e-6 when the summation orders differ
(another BLAS, another CPU, threads), the LayerNorms keep the scale at O(1) and the errors of the ~12 reductions of
2 blocks add like a random walk: ~sqrt(12) * 1e-6 = 3.5e-6. 1e-5 leaves a factor ~3 above that estimate and is
1e3 .. 1e5 times below what a mapping error (a transposed patch, swapped q/k/v, another eps) produces (1e-2 .. 1).
Measured on this machine: 1e-7 .. 5e-7 (features, per-block outputs, decoder, targets, losses, logits).
"""
import copy
import os
import re

import numpy as np
import pytest
import torch
from conftest import REPO

from maeast_fairseq.core.eat import Eat, EatConfig
from maeast_fairseq.core.losses import eat_frame_loss, ufo_loss
from maeast_fairseq.official import eat as official_eat
from maeast_fairseq.official.common import OfficialFormatError
from maeast_fairseq.official.reader import read_raw

FIXTURES = os.path.join(REPO, "tests", "fixtures", "official")
PRETRAIN = os.path.join(FIXTURES, "eat_pretrain_tiny2.pt")
FINETUNE = os.path.join(FIXTURES, "eat_finetune_tiny2_5cls.pt")
TOL = 1e-5
#: a one-block EAT for the tests of the core's options
TINY = dict(embed_dim=64, encoder_layers=1, num_heads=4, ffn_dim=128, average_top_k_layers=1, decoder_embed_dim=64,
            decoder_layers=1, max_time_patches=8)


def rel(ours, ref) -> float:
    ref = torch.as_tensor(np.asarray(ref), dtype=torch.float32)
    ours = ours.detach().float()
    assert tuple(ours.shape) == tuple(ref.shape), (tuple(ours.shape), tuple(ref.shape))
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def raw_pretrain():
    return read_raw(PRETRAIN)


@pytest.fixture(scope="module")
def raw_finetune():
    return read_raw(FINETUNE)


@pytest.fixture(scope="module")
def refs_pretrain():
    return dict(np.load(os.path.join(FIXTURES, "eat_pretrain_tiny2.refs.npz")))


@pytest.fixture(scope="module")
def refs_finetune():
    return dict(np.load(os.path.join(FIXTURES, "eat_finetune_tiny2_5cls.refs.npz")))


@pytest.fixture(scope="module")
def eat_x():
    """(2, 128, 128) = EAT's (B, 1, T, F) input without the channel axis (our models take (B, T, F))."""
    return torch.from_numpy(np.load(os.path.join(FIXTURES, "inputs.npz"))["eat_x"])[:, 0]


def build_core(conv, **overrides) -> Eat:
    model = Eat(EatConfig(**dict(conv.model_cfg, **overrides)))
    model.load_state_dict(conv.state, strict=True)
    return model.eval()


def build_classifier(conv):
    from maeast_fairseq.core.classifier import AudioClassifier, ClassifierConfig

    names = set(ClassifierConfig.__dataclass_fields__)
    cfg = ClassifierConfig(**{k: v for k, v in conv.classifier.items() if k in names}, encoder_name="eat",
                           encoder_cfg=conv.model_cfg)
    core = Eat(EatConfig(**conv.model_cfg))
    core.remove_pretraining_modules()
    model = AudioClassifier(cfg, core)
    model.load_state_dict(conv.state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------- format detection
def test_matches_both_eat_formats_and_nothing_else(raw_pretrain, raw_finetune):
    assert official_eat.matches(raw_pretrain) and official_eat.matches(raw_finetune)
    # the model name alone is not enough: the keys must be EAT's
    renamed = dict(raw_pretrain, model={"encoder.weight": torch.zeros(1)})
    assert not official_eat.matches(renamed)
    # a bare state dict (SSAST .pth) and one of our own checkpoints are not EAT files
    assert not official_eat.matches({"module.v.cls_token": torch.zeros(1, 1, 4)})
    ours = {"cfg": {"model": {"_name": "eat"}}, "model": {"encoder.cls_token": torch.zeros(1, 1, 4)}}
    assert not official_eat.matches(ours)
    with pytest.raises(OfficialFormatError, match="not an EAT checkpoint"):
        official_eat.convert(ours, "ours.pt")


def test_pretraining_conversion_report(raw_pretrain):
    conv = official_eat.convert(raw_pretrain, PRETRAIN)
    assert (conv.family, conv.model_name, conv.variant) == ("eat", "eat", "student")
    cfg = conv.model_cfg
    assert (cfg["embed_dim"], cfg["encoder_layers"], cfg["num_heads"], cfg["ffn_dim"], cfg["clones"],
            cfg["max_time_patches"]) == (64, 2, 4, 256, 2, 16)
    assert (cfg["decoder_embed_dim"], cfg["decoder_layers"], cfg["average_top_k_layers"]) == (64, 2, 2)
    # 36 student tensors + 30 teacher tensors in the file; the two position tables are dropped with a reason
    assert len(conv.state) == 35 + 29
    assert set(conv.dropped) == {"modality_encoders.IMAGE.fixed_positional_encoder.positions",
                                 "_ema.modality_encoders.IMAGE.fixed_positional_encoder.positions"}
    assert all("recomputed" in why for why in conv.dropped.values())
    fe = conv.frontend
    assert (fe["window_type"], fe["subtract_waveform_mean"], fe["norm"], fe["length_policy"]) == (
        "hanning", True, "dataset", "fixed")
    assert (fe["norm_mean"], fe["norm_std"], fe["target_frames"]) == (-4.268, 4.569, 128)
    text = " ".join(conv.notes)
    assert "student" in text and "feature_extract.py" in text and "-4.268" in text


# --------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("who", ["student", "teacher"])
def test_encoder_outputs_equal_the_official_code(raw_pretrain, refs_pretrain, eat_x, who):
    conv = official_eat.convert(raw_pretrain, PRETRAIN, ema=who == "teacher")
    model = build_core(conv)
    with torch.no_grad():
        x, padding, _ = model.encoder.embed(eat_x)
        h, hidden, ffn = model.encoder.encode(x, padding, return_hidden=True, return_ffn=True)
        feats = model.extract_features(eat_x)
    checks = {
        "input_after_ln": hidden[0], "block0_out": hidden[1], "block1_out": hidden[2],
        "block0_ffn_out": ffn[0], "block1_ffn_out": ffn[1], "features_x": h,
    }
    for name, ours in checks.items():
        assert rel(ours, refs_pretrain[f"{who}_{name}"]) < TOL, name
    # the public feature API: CLS first in EAT's output, our patch tokens + cls
    assert rel(feats["x"], refs_pretrain[f"{who}_features_x"][:, 1:]) < TOL
    assert rel(feats["cls"], refs_pretrain[f"{who}_features_x"][:, 0]) < TOL


def test_teacher_and_student_both_load_and_differ_as_stored(raw_pretrain):
    student = official_eat.convert(raw_pretrain, PRETRAIN)
    teacher = official_eat.convert(raw_pretrain, PRETRAIN, ema=True)
    assert teacher.variant == "teacher (EMA)"
    w, ema = raw_pretrain["model"], raw_pretrain["model"]["_ema"]
    key = "blocks.1.attn.qkv.weight"
    ours = "encoder.transformer.blocks.1.attn.qkv.weight"
    assert torch.equal(student.state[ours], w[key]) and torch.equal(teacher.state[ours], ema[key])
    # both keep the teacher for further pretraining, and the same decoder
    assert torch.equal(student.state["teacher.transformer.blocks.1.attn.qkv.weight"], ema[key])
    assert torch.equal(student.state["decoder.proj.weight"], teacher.state["decoder.proj.weight"])
    # they differ as stored (teacher = 0.5 initial + 0.5 student after update 1: ~1e-3 apart)
    diff = max(float((student.state[k] - teacher.state[k]).abs().max()) for k in student.state
               if k.startswith("encoder."))
    assert 1e-4 < diff < 1e-1
    # ema=True drops the student's encoder tensors with the reason, and says which encoder it is
    assert "blocks.1.attn.qkv.weight" in teacher.dropped
    assert any("teacher" in n for n in teacher.notes)
    # through the public loader: the student by default, the teacher on request
    from maeast_fairseq.checkpoint import load_pretrained

    for options, want in (({}, w[key]), ({"ema": True}, ema[key])):
        pre = load_pretrained(PRETRAIN, official=options)
        assert torch.equal(pre.model.encoder.transformer.blocks[1].attn.qkv.weight.detach(), want)


def test_pretraining_pass_under_the_recorded_masks(raw_pretrain, refs_pretrain, eat_x):
    """The official criterion's pass with its precomputed masks and mask_noise_std 0 (``pretrain_nonoise_*``)."""
    conv = official_eat.convert(raw_pretrain, PRETRAIN)
    model = build_core(conv, mask_noise_std=0.0)
    mask = torch.from_numpy(refs_pretrain["pretrain_precomputed_mask"]).bool()
    ref = {k[len("pretrain_nonoise_"):]: v for k, v in refs_pretrain.items() if k.startswith("pretrain_nonoise_")}
    with torch.no_grad():
        student = model.forward_student(eat_x, mask=mask)
        out = model(eat_x, mask=mask)
        targets, _ = model.forward_teacher(eat_x)
        decoder_all = model.decoder(torch.from_numpy(ref["decoder_input"]), student.grid)
    assert torch.equal(out["mask"], mask)
    # the decoder input: the student's outputs put back in place, zeros in the masked slots (no noise)
    masked = mask.numpy()
    assert float(np.abs(ref["decoder_input"][masked]).max()) == 0.0
    # student encoder: CLS + the 12 kept tokens per clone. EAT orders the kept tokens by an unstable argsort of
    # the mask (an order of its sort implementation), ours ascending: the same tokens, so match them by content
    enc_ref = torch.from_numpy(ref["student_encoder_out"])
    assert rel(student.encoded[:, 0], enc_ref[:, 0]) < TOL
    dist = torch.cdist(enc_ref[:, 1:], student.encoded[:, 1:])
    perm = dist.argmin(-1)
    assert all(sorted(row.tolist()) == list(range(perm.shape[1])) for row in perm)  # a bijection per row
    matched = torch.gather(student.encoded[:, 1:], 1, perm[..., None].expand(-1, -1, enc_ref.shape[-1]))
    assert rel(matched, enc_ref[:, 1:]) < TOL
    # the decoder on every token, and our predictions = its output at the masked positions (row-major)
    assert rel(decoder_all, ref["decoder_out"]) < TOL
    assert rel(out["pred"], ref["decoder_out"][masked]) < TOL
    # the teacher's targets (per clip, before the per-clone repeat)
    assert rel(targets, ref["teacher_targets"]) < TOL
    # the per-token regression loss, the CLS loss (EAT's x sample_size scaling) and the total
    assert rel(eat_frame_loss(out["pred"], out["target"], reduction="none"), ref["loss_IMAGE_regression"]) < TOL
    d, m = out["pred"].shape[-1], out["num_masked"]
    cls_terms = (out["cls_pred"] - out["cls_target"]).pow(2) / d ** 0.5 * m
    assert rel(cls_terms, ref["loss_cls"]) < TOL
    total, frame, utterance, sample_size = ufo_loss(out)
    assert int(sample_size) == int(ref["sample_size"][0]) == 208
    assert rel(frame.reshape(1), ref["loss_IMAGE_regression_sum"]) < TOL
    assert rel(utterance.reshape(1), ref["loss_cls_sum"]) < TOL
    assert rel(total.reshape(1), ref["loss"]) < TOL
    assert rel(out["target_var"].reshape(1), ref["target_var"]) < TOL
    assert rel(out["pred_var"].reshape(1), ref["pred_var"]) < TOL


def test_finetuned_logits_equal_the_official_code(raw_finetune, refs_finetune, eat_x):
    conv = official_eat.convert(raw_finetune, FINETUNE)
    assert (conv.model_name, conv.variant) == ("maeast_classifier", "fine-tuned")
    c = conv.classifier
    assert (c["num_classes"], c["pooling"], c["multi_label"], c["head_norm_eps"]) == (5, "cls", True, 1e-6)
    assert conv.frontend["target_frames"] == 128
    assert set(conv.dropped) == {"model.modality_encoders.IMAGE.fixed_positional_encoder.positions"}
    model = build_classifier(conv)
    assert model.head_norm.eps == 1e-6
    with torch.no_grad():
        feats = model.encoder.extract_features(eat_x)
        pooled = model.head_norm(model.pool(feats))
        logits = model(eat_x)["logits"]
    assert rel(logits, refs_finetune["logits"]) < TOL
    assert rel(pooled, refs_finetune["fc_norm_out"]) < TOL
    assert rel(feats["cls"], refs_finetune["features_x"][:, 0]) < TOL
    assert rel(feats["x"], refs_finetune["features_x"][:, 1:]) < TOL
    for i in (0, 1):
        assert rel(feats["hidden_states"][i + 1], refs_finetune[f"block{i}_out"][:, 1:]) < TOL


# ------------------------------------------------------------------------------------------------ strictness
def tampered(raw, edit):
    raw = dict(raw)
    raw["model"] = dict(raw["model"])
    if "_ema" in raw["model"]:
        raw["model"]["_ema"] = dict(raw["model"]["_ema"])
    edit(raw["model"])
    return raw


@pytest.mark.parametrize("what,edit,needle", [
    ("removed", lambda w: w.pop("blocks.1.mlp.fc2.bias"), "'blocks.1.mlp.fc2.bias' is missing"),
    ("renamed", lambda w: w.__setitem__("blocks.1.mlp.fc3.bias", w.pop("blocks.1.mlp.fc2.bias")),
     "'blocks.1.mlp.fc2.bias' is missing from the file (EAT stores it in every checkpoint of this kind); the "
     "file is truncated, edited or of another version; keys of the file that map to nothing: "
     "['blocks.1.mlp.fc3.bias']"),
    ("reshaped", lambda w: w.__setitem__("blocks.0.attn.qkv.weight", torch.zeros(192, 32)),
     "'blocks.0.attn.qkv.weight' has shape (192, 32)"),
    ("unknown", lambda w: w.__setitem__("modality_encoders.IMAGE.alibi_scale", torch.zeros(1)),
     "'modality_encoders.IMAGE.alibi_scale'"),
    ("teacher key removed", lambda w: w["_ema"].pop("blocks.0.norm1.weight"),
     "'_ema.blocks.0.norm1.weight' is missing"),
    ("teacher extra block", lambda w: w["_ema"].__setitem__("blocks.2.norm1.weight", torch.zeros(64)),
     "'_ema.blocks.2.norm1.weight'"),
    ("decoder layer removed", lambda w: w.pop("modality_encoders.IMAGE.decoder.blocks.1.0.weight"),
     "'modality_encoders.IMAGE.decoder.blocks.1.0.weight' is missing"),
    ("positions of another layout", lambda w: w.__setitem__(
        "modality_encoders.IMAGE.fixed_positional_encoder.positions",
        w["modality_encoders.IMAGE.fixed_positional_encoder.positions"].flip(-1)), "sin-cos"),
])
def test_tampered_pretraining_file_fails_naming_the_key(raw_pretrain, what, edit, needle):
    with pytest.raises(OfficialFormatError) as err:
        official_eat.convert(tampered(raw_pretrain, edit), PRETRAIN)
    assert needle in str(err.value) and PRETRAIN in str(err.value), what


@pytest.mark.parametrize("edit,needle", [
    (lambda w: w.pop("fc_norm.bias"), "'fc_norm.bias' is missing"),
    (lambda w: w.__setitem__("head.bias", torch.zeros(7)), "'head.bias' has shape (7,)"),
    (lambda w: w.pop("model.blocks.0.norm2.weight"), "'model.blocks.0.norm2.weight' is missing"),
    (lambda w: w.__setitem__("model.blocks.0.attn.q_bias", torch.zeros(64)), "'model.blocks.0.attn.q_bias'"),
])
def test_tampered_finetuned_file_fails_naming_the_key(raw_finetune, edit, needle):
    with pytest.raises(OfficialFormatError) as err:
        official_eat.convert(tampered(raw_finetune, edit), FINETUNE)
    assert needle in str(err.value) and FINETUNE in str(err.value)


def test_tampered_file_on_disk_fails_naming_the_key(raw_pretrain, tmp_path):
    path = tmp_path / "eat_tampered.pt"
    torch.save(tampered(raw_pretrain, lambda w: w.pop("blocks.0.attn.proj.weight")), path)
    with pytest.raises(OfficialFormatError) as err:
        official_eat.convert(read_raw(str(path)), str(path))
    assert "'blocks.0.attn.proj.weight'" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("field,value", [
    ("use_alibi_encoder", True), ("num_extra_tokens", 2), ("prenet_depth", 1), ("transformer_decoder", True)])
def test_unsupported_official_settings_are_refused(raw_pretrain, field, value):
    raw = copy.deepcopy({k: raw_pretrain[k] for k in ("cfg", "model")})
    raw["cfg"]["model"]["modalities"]["image"][field] = value
    with pytest.raises(OfficialFormatError, match=f"modalities.image.{field}"):
        official_eat.convert(raw, PRETRAIN)


def test_options_that_do_not_apply_are_refused(raw_pretrain, raw_finetune):
    with pytest.raises(OfficialFormatError, match="ema=True"):
        official_eat.convert(raw_finetune, FINETUNE, ema=True)
    with pytest.raises(OfficialFormatError, match="labels="):
        official_eat.convert(raw_pretrain, PRETRAIN, labels="labels.csv")
    no_teacher = tampered(raw_pretrain, lambda w: w.pop("_ema"))
    with pytest.raises(OfficialFormatError, match="no '_ema'"):
        official_eat.convert(no_teacher, PRETRAIN, ema=True)
    # without a teacher the student still converts; the teacher starts as its copy, and a note says so
    conv = official_eat.convert(no_teacher, PRETRAIN)
    assert torch.equal(conv.state["teacher.cls_token"], conv.state["encoder.cls_token"])
    assert any("no '_ema'" in n for n in conv.notes)


def test_finetuned_file_without_the_pretraining_config(raw_finetune, refs_finetune, eat_x):
    """A fine-tuned file saved without ``pretrained_model_args``: sizes from the shapes, heads = dim / 64 (a note
    says so); ``num_heads=`` gives the real value (the fixture is 64 wide with 4 heads). A stored config wins:
    a different ``num_heads`` for it is an error."""
    raw = copy.deepcopy({k: raw_finetune[k] for k in ("cfg", "model")})
    raw["cfg"]["model"].pop("pretrained_model_args")
    conv = official_eat.convert(raw, FINETUNE)
    assert (conv.model_cfg["embed_dim"], conv.model_cfg["encoder_layers"], conv.model_cfg["ffn_dim"]) == (64, 2, 256)
    assert conv.model_cfg["max_time_patches"] == 16 and conv.model_cfg["num_heads"] == 1
    assert any("num_heads = 1 ASSUMED" in n for n in conv.notes)
    conv = official_eat.convert(raw, FINETUNE, num_heads=4)  # the fixture's real value: then the logits are EAT's
    assert any("num_heads = 4 as given" in n for n in conv.notes)
    with torch.no_grad():
        logits = build_classifier(conv)(eat_x)["logits"]
    assert rel(logits, refs_finetune["logits"]) < TOL
    with pytest.raises(OfficialFormatError, match="num_heads=8 given, but the file's config stores 4"):
        official_eat.convert(raw_finetune, FINETUNE, num_heads=8)


# ------------------------------------------------------------------------------------------------------ labels
def write_audioset_labels(path, n):
    rows = ["index,mid,display_name"] + [f'{i},/m/0{i:02d},"Class {i}, with comma"' for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_label_file_names_the_classes(raw_finetune, tmp_path):
    csv_path = write_audioset_labels(tmp_path / "class_labels_indices.csv", 5)
    conv = official_eat.convert(raw_finetune, FINETUNE, labels=str(csv_path))
    assert conv.classifier["class_names"] == [f"Class {i}, with comma" for i in range(5)]
    txt = tmp_path / "labels.txt"
    txt.write_text("a\nb\nc\nd\ne\n")
    assert official_eat.read_labels(str(txt), 5) == list("abcde")
    with pytest.raises(ValueError, match="5 class names for a head with 527"):
        official_eat.read_labels(str(csv_path), 527)


# ------------------------------------------------------------------------------------- fidelity options of the core
def test_decoder_projection_init_official_or_bert():
    cfg = TINY
    torch.manual_seed(0)
    bert = Eat(EatConfig(**cfg)).decoder.proj.requires_grad_(False)
    torch.manual_seed(0)
    official = Eat(EatConfig(**cfg, decoder_proj_init="pytorch")).decoder.proj.requires_grad_(False)
    # BERT: N(0, 0.02) weights, zero bias (the default)
    assert float(bert.bias.abs().max()) == 0.0 and 0.015 < float(bert.weight.std()) < 0.025
    # PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (std 1/sqrt(3 fan_in))
    bound = 64 ** -0.5
    assert float(official.weight.abs().max()) <= bound and float(official.bias.abs().max()) <= bound
    assert float(official.bias.abs().max()) > 0.0
    assert abs(float(official.weight.std()) - bound / 3 ** 0.5) < 0.1 * bound / 3 ** 0.5
    with pytest.raises(ValueError, match="decoder_proj_init"):
        Eat(EatConfig(**cfg, decoder_proj_init="xavier"))


def test_explicit_masks_are_checked(raw_pretrain, eat_x):
    model = build_core(official_eat.convert(raw_pretrain, PRETRAIN))
    with pytest.raises(ValueError, match=r"expected \(B \* clones, N\) = \(4, 64\)"):
        model(eat_x, mask=torch.zeros(2, 64, dtype=torch.bool))
    # clip 1 ends after 64 of its 128 frames: its tokens 32..63 are padding and may not be masked
    frame_padding = torch.zeros(2, 128, dtype=torch.bool)
    frame_padding[1, 64:] = True
    mask = torch.zeros(4, 64, dtype=torch.bool)
    mask[:, :20] = True
    out = model(eat_x, frame_padding, mask=mask)
    assert int(out["num_masked"]) == 80 and torch.equal(out["mask"], mask)
    mask[3, 40] = True
    with pytest.raises(ValueError, match="covers padding"):
        model(eat_x, frame_padding, mask=mask)


def test_head_layernorm_eps_is_per_method():
    from maeast_fairseq.core.classifier import AudioClassifier, ClassifierConfig
    from maeast_fairseq.core.ssast import Ssast, SsastConfig

    eat = Eat(EatConfig(**TINY))
    ssast = Ssast(SsastConfig(embed_dim=64, num_heads=4, encoder_layers=1, ffn_dim=128, target_frames=64))
    for name, core, want in (("eat", eat, 1e-6), ("ssast", ssast, 1e-5)):
        core.remove_pretraining_modules()
        head = AudioClassifier(ClassifierConfig(num_classes=3, encoder_name=name, pooling="mean"), core).head_norm
        assert head.eps == want
    explicit = AudioClassifier(ClassifierConfig(num_classes=3, encoder_name="ssast", pooling="mean",
                                                head_norm_eps=1e-6), ssast)
    assert explicit.head_norm.eps == 1e-6


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("path", [PRETRAIN, FINETUNE])
def test_embed_cli_hear_and_s3prl_from_official_eat_files(path, clips, tmp_path):
    from maeast_fairseq.checkpoint import load_pretrained
    from maeast_fairseq.cli import embed as embed_cli
    from maeast_fairseq.interop import hear
    from maeast_fairseq.interop.s3prl import S3prlUpstream

    out = tmp_path / "emb.npz"
    assert embed_cli.main([path, str(clips / "two"), "--out", str(out), "--device", "cpu"]) == 0
    emb = np.load(out, allow_pickle=False)
    assert emb["clip"].shape == (2, 64) and np.isfinite(emb["clip"]).all()
    pre = load_pretrained(path)
    assert (pre.name, pre.default_pooling, pre.frontend.window_type, pre.frontend.norm_mean) == (
        "eat", "cls", "hanning", -4.268)
    # HEAR: the scene embedding is the CLS embedding of the same model
    model = hear.load_model(path)
    audio = torch.randn(2, 16000) * 0.1
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene, pre.embed(list(audio))["clip"], atol=1e-5, rtol=0)
    # s3prl: the stack input + one hidden state per block, at 16 frames (2560 samples) per step
    up = S3prlUpstream(path).eval()
    with torch.no_grad():
        hs = up(list(audio))["hidden_states"]
    assert len(hs) == 3 and hs[0].shape[-1] == 8 * 64
    assert up.get_downsample_rates("hidden_states") == 2560


@pytest.mark.slow
def test_evaluate_cli_from_the_official_pretraining_file(clips, tmp_path):
    import json

    from maeast_fairseq.cli import evaluate as evaluate_cli

    out = tmp_path / "superb.json"
    rc = evaluate_cli.main([PRETRAIN, "--data", str(clips / "data"), "--test", "valid", "--steps", "10",
                            "--seeds", "0", "--cache", str(tmp_path / "cache"), "--json", str(out), "--quiet",
                            "--threads", "1", "--device", "cpu"])
    assert rc == 0
    result = json.loads(out.read_text())
    # the official student, its 3 hidden states (stack input + 2 blocks) of 8 x 64 per 16-frame step
    assert (result["upstream"]["model"], result["upstream"]["layers"], result["upstream"]["dim"]) == ("eat", 3, 512)
    assert result["upstream"]["frame_rate_hz"] == 6.25 and result["num_classes"] == 2


@pytest.mark.slow
def test_predict_prints_names_from_a_label_file(clips, tmp_path, capsys):
    from maeast_fairseq.cli import predict as predict_cli
    from maeast_fairseq.official import checkpoint_dict, read_official

    labels = write_audioset_labels(tmp_path / "class_labels_indices.csv", 5)
    wav = str(sorted((clips / "two").glob("*.wav"))[0])
    # the official file as it is, names from --labels
    assert predict_cli.main([FINETUNE, wav, "--labels", str(labels), "--top", "5"]) == 0
    printed = capsys.readouterr().out
    assert all(f"Class {i}, with comma" in printed for i in range(5))
    # converted with labels=: the names travel in our checkpoint
    converted = tmp_path / "eat_ft_ours.pt"
    torch.save(checkpoint_dict(read_official(FINETUNE, labels=str(labels))), converted)
    assert predict_cli.main([str(converted), wav, "--top", "2"]) == 0
    assert "Class " in capsys.readouterr().out
    # without names: the class indices
    assert predict_cli.main([FINETUNE, wav, "--top", "5"]) == 0
    rows = re.findall(r"^\s+(\d)\s+0\.\d{4}$", capsys.readouterr().out, flags=re.M)
    assert sorted(rows) == ["0", "1", "2", "3", "4"]


def hydra_train(args, cwd):
    from conftest import console, run_cli

    return run_cli([console("fairseq-hydra-train"), *args, f"hydra.run.dir={cwd / 'hydra'}"], cwd)


@pytest.mark.slow
def test_finetune_a_few_updates_from_the_official_pretraining_file(clips, tmp_path):
    pytest.importorskip("fairseq")
    log = hydra_train(["--config-dir", os.path.join(REPO, "examples", "finetune"), "--config-name", "small_data_tiny",
                       f"task.data={clips / 'data'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
                       f"model.model_path={PRETRAIN}", "optimization.max_update=2", "common.log_interval=1"],
                      tmp_path)
    assert f"loaded the eat encoder from {PRETRAIN}" in log
    assert "front end copied from" in log and "'norm_mean': -4.268" in log
    state = read_raw(str(tmp_path / "ckpt" / "checkpoint_last.pt"))
    assert state["cfg"]["model"]["encoder_name"] == "eat"


@pytest.mark.slow
def test_pretraining_continues_from_a_converted_file(clips, tmp_path):
    """The documented command: ``maeast-convert``, then ``checkpoint.finetune_from_model=`` (fresh optimizer,
    schedule, meters and data iterator)."""
    pytest.importorskip("fairseq")
    from maeast_fairseq.cli import convert as convert_cli
    from maeast_fairseq.official import read_official

    conv = read_official(PRETRAIN)
    converted = tmp_path / "eat_converted.pt"
    assert convert_cli.main([PRETRAIN, str(converted)]) == 0
    log = hydra_train(["--config-dir", os.path.join(REPO, "examples", "pretrain"), "--config-name", "eat_base_tiny",
                       f"task.data={clips / 'data'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
                       f"checkpoint.finetune_from_model={converted}", "model.clones=2", "optimization.max_update=2",
                       "common.log_interval=1", "checkpoint.save_interval_updates=0"], tmp_path)
    assert re.search(r"num_updates[= ]2\b", log), log[-2000:]
    after = read_raw(str(tmp_path / "ckpt" / "checkpoint_last.pt"))["model"]
    assert set(after) == set(conv.state)  # student, decoder and teacher all carried through
    # started from the official weights: 2 small updates move them by far less than their own scale (a fresh init
    # would be O(1) away), and the teacher followed by EMA
    for key in ("encoder.patch_embed.proj.weight", "encoder.transformer.blocks.1.ffn.fc2.weight",
                "decoder.proj.weight", "teacher.transformer.blocks.0.attn.qkv.weight"):
        start = conv.state[key]
        assert float((after[key] - start).norm() / start.norm()) < 0.1, key
