"""Bad input loses nothing: every fault is an error naming the file, the line and the fix, or - where the user chose
a skip policy - a logged count, never silence.

Faults already covered elsewhere are not re-tested here (RELIABILITY.md has the full table): manifest
format errors (test_manifests::test_read_manifest_errors), line without a tab through the dataset
(test_dataset::test_line_without_tab_names_file_and_line), missing / unreadable audio through the dataset
(test_dataset::test_missing_and_unreadable_files_name_manifest_line_and_path), shorter than one patch
(test_dataset::test_clip_shorter_than_one_patch), silence at the fbank (test_fbank::test_silence_hits_the_log_floor),
stereo down-mix and resampling quality (test_audio), label count / malformed label lines
(test_manifests::test_read_labels_errors), unknown labels (test_finetune::test_label_errors_name_file_and_line).
Here the same faults are taken through the paths a user hits (the tasks' load_dataset, maeast-manifest, the loader)
where those tests stop short of them, plus the faults nothing tested before.
"""
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fairseq")

from conftest import REPO, console, fairseq_env, tiny_kwargs  # noqa: E402

from maeast_fairseq.audio import AudioError, load_audio, read_clip  # noqa: E402
from maeast_fairseq.checkpoint import CheckpointError, load_pretrained  # noqa: E402
from maeast_fairseq.data.fbank_dataset import FbankDataset  # noqa: E402
from maeast_fairseq.data.manifest import ManifestError, check_manifest  # noqa: E402
from maeast_fairseq.fbank import Fbank  # noqa: E402
from maeast_fairseq.frontend import FrontendConfig  # noqa: E402
from manifests.cli import main as manifest_main  # noqa: E402

SR = 16000


def write_wav(folder, name, seconds=0.5, sr=SR, channels=1, subtype=None, data=None, seed=0):
    """Write noise (or ``data``) to ``folder/name``; returns the manifest line ``name<TAB>frames``."""
    if data is None:
        shape = (int(seconds * sr), channels) if channels > 1 else (int(seconds * sr),)
        data = (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
    sf.write(str(folder / name), data, sr, subtype=subtype)
    return f"{name}\t{len(data)}"


def manifest(folder, lines, root=None, name="train.tsv"):
    path = folder / name
    path.write_text("\n".join([str(root or folder)] + lines) + "\n")
    return str(path)


def truncate(path, keep=0.5):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: int(len(raw) * keep)])


def pretraining_task(data, **kw):
    from maeast_fairseq.tasks.pretraining import PretrainingTask, PretrainingTaskConfig

    return PretrainingTask.setup_task(PretrainingTaskConfig(data=str(data), patch_frames=16, seed=1, **kw))


FRONTEND = dict(sample_rate=16000, num_mel_bins=128, window_type="hanning", subtract_waveform_mean=True,
                norm="dataset", norm_mean=-4.27, norm_std=4.57)


def classification_task(data, model_path="", **kw):
    from maeast_fairseq.tasks.classification import ClassificationTask, ClassificationTaskConfig

    cfg = ClassificationTaskConfig(data=str(data), model_path=model_path, seed=1, train_subset="train",
                                   target_frames=128, **FRONTEND, **kw)
    return ClassificationTask.setup_task(cfg)


# ------------------------------------------------------------------------------------------------------ manifests
def test_missing_manifest_names_the_splits_that_exist(tmp_path):
    manifest(tmp_path, [write_wav(tmp_path, "a.wav")])
    task = pretraining_task(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        task.load_dataset("valid")
    msg = str(err.value)
    assert str(tmp_path / "valid.tsv") in msg and "has the splits train" in msg and "maeast-manifest" in msg
    with pytest.raises(FileNotFoundError, match=r"task\.data=.*nowhere.*is not a folder.*maeast-manifest"):
        pretraining_task(tmp_path / "nowhere")


def test_manifest_with_only_the_root_line(tmp_path):
    path = manifest(tmp_path, [])
    with pytest.raises(ManifestError, match=r"train\.tsv: has no clip line, only the root folder.*maeast-manifest"):
        FbankDataset(path, FrontendConfig())


def test_wrong_root_fails_at_construction_naming_line_1(tmp_path):
    line = write_wav(tmp_path, "a.wav")
    gone = tmp_path / "moved_away"
    with pytest.raises(ManifestError) as err:
        FbankDataset(manifest(tmp_path, [line], root=gone), FrontendConfig())
    assert err.value.line == 1 and "root folder" in str(err.value) and str(gone) in str(err.value)
    assert "does not exist" in str(err.value) and "Fix: correct line 1" in str(err.value)
    (tmp_path / "other").mkdir()  # a folder that exists but is not where the clips are
    with pytest.raises(ManifestError) as err:
        FbankDataset(manifest(tmp_path, [line, line], root=tmp_path / "other"), FrontendConfig())
    assert err.value.line == 1 and "none of the first 2 clips exist" in str(err.value)
    assert "line 2: " in str(err.value) and "maeast-manifest --check" in str(err.value)


def test_size_that_disagrees_with_the_file_is_an_error_at_load(tmp_path):
    good = write_wav(tmp_path, "a.wav", 0.5)
    write_wav(tmp_path, "b.wav", 0.5)
    path = manifest(tmp_path, [good, "b.wav\t8800"])  # b.wav holds 8000 frames
    ds = FbankDataset(path, FrontendConfig(), shuffle=False)
    assert ds[0]["fbank"].shape[0] == 48
    with pytest.raises(ManifestError) as err:
        ds[1]
    msg = str(err.value)
    assert err.value.file == path and err.value.line == 3
    assert "lists 8800 samples for b.wav but the file holds 8000 (at 16000 Hz)" in msg
    assert "regenerate the manifest" in msg and f"maeast-manifest --check {path}" in msg


# ---------------------------------------------------------------------------------------------------------- audio
def test_truncated_audio_is_skipped_reported_and_refused(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio, "good.wav")
    write_wav(audio, "cut.wav")  # 8000 frames, then half the file is lost (an interrupted copy)
    write_wav(audio, "cut.flac")
    truncate(audio / "cut.wav")
    truncate(audio / "cut.flac")
    # libsndfile alone would not notice: it reports the frames that are there
    assert sf.info(str(audio / "cut.wav")).frames < 8000

    # maeast-manifest leaves the WAV out and says so (the FLAC header still looks complete: see below)
    assert manifest_main([str(audio), "--dest", str(tmp_path / "data"), "--valid-percent", "0"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file(s): truncated" in err and "cut.wav: 8000 frames declared" in err
    assert "cut.wav" not in (tmp_path / "data" / "train.tsv").read_text()

    # --check reports it on its line; the loader refuses it naming the manifest line
    n_cut = sf.info(str(audio / "cut.wav")).frames
    path = manifest(tmp_path, ["good.wav\t8000", f"cut.wav\t{n_cut}", "cut.flac\t8000"], root=audio)
    problems = check_manifest(path)
    assert [(p.line, p.kind) for p in problems] == [(3, "truncated")]
    assert "declares 8000 frames but the file holds" in problems[0].message
    ds = FbankDataset(path, FrontendConfig(), shuffle=False)
    with pytest.raises(AudioError, match=r"train\.tsv:3: .*cut\.wav.*is truncated: its header declares 8000 frames"
                                         r".*Fix: copy the file again"):
        ds[1]
    # a damaged compressed stream is found when it is decoded
    with pytest.raises(AudioError, match=r"train\.tsv:4: cannot read audio file .*cut\.flac.*complete audio file"):
        ds[2]


def test_zero_length_audio(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio, "good.wav")
    write_wav(audio, "empty.wav", data=np.zeros(0, np.float32))
    assert manifest_main([str(audio), "--dest", str(tmp_path / "data"), "--valid-percent", "0"]) == 0
    assert "skipped 1 file(s): empty (0 samples)" in capsys.readouterr().err
    path = manifest(tmp_path, ["good.wav\t8000", "empty.wav\t0"], root=audio)
    assert [(p.line, p.kind) for p in check_manifest(path)] == [(3, "empty")]
    with pytest.raises(AudioError, match=r"train\.tsv:3: audio file is empty \(0 samples\).*empty\.wav"):
        FbankDataset(path, FrontendConfig())


def test_silence_gives_finite_features(tmp_path):
    path = manifest(tmp_path, [write_wav(tmp_path, "silence.wav", data=np.zeros(8000, np.int16), subtype="PCM_16")])
    floor = float(np.log(np.finfo(np.float32).eps))
    for cfg in (FrontendConfig(), FrontendConfig(window_type="povey", subtract_waveform_mean=False, norm="none",
                                                 length_policy="crop_to_shortest")):
        ds = FbankDataset(path, cfg, shuffle=False)
        x = ds.collater([ds[0]])["net_input"]["fbank"]
        assert torch.isfinite(x).all()
        expected = (floor - cfg.norm_mean) / (2 * cfg.norm_std) if cfg.norm == "dataset" else floor
        torch.testing.assert_close(x[0, :48], torch.full((48, 128), expected))


def test_nan_and_inf_samples_are_refused_naming_the_file(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    x[[100, 4000]] = np.nan
    x[5000] = np.inf
    path = manifest(tmp_path, [write_wav(tmp_path, "ok.wav"), write_wav(tmp_path, "nan.wav", data=x,
                                                                         subtype="FLOAT")])
    ds = FbankDataset(path, FrontendConfig(), shuffle=False)
    with pytest.raises(AudioError) as err:
        ds[1]
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: ") and "nan.wav" in msg
    assert "3 NaN/Inf sample(s) (first at frame 100, channel 0)" in msg and "drop it from the manifest" in msg


def test_float_audio_beyond_unit_range_warns_once_per_file_and_is_kept(tmp_path, caplog):
    """int16 audio written as float without / 32768: a warning naming the file and its peak, samples unchanged."""
    loud = (3000.0 * np.random.default_rng(0).standard_normal(8000)).clip(-32768, 32767).astype(np.float32)
    loud[1234] = -32768.0
    lines = [write_wav(tmp_path, "loud.wav", data=loud, subtype="FLOAT"), write_wav(tmp_path, "ok.wav"),
             write_wav(tmp_path, "full_scale.wav", data=np.full(8000, 32767, np.int16), subtype="PCM_16")]
    path = manifest(tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="maeast_fairseq.audio"):
        ds = FbankDataset(path, FrontendConfig(), shuffle=False)
        assert torch.isfinite(ds[0]["fbank"]).all()
        warned = [r.getMessage() for r in caplog.records if r.name == "maeast_fairseq.audio"]
        assert len(warned) == 1, warned
        assert str(tmp_path / "loud.wav") in warned[0] and "peak |sample| = 32768" in warned[0]
        assert "samples should be in [-1, 1]; was this integer PCM saved as float without scaling?" in warned[0]
        # the samples are not altered, and the same file does not warn again (once per file and process)
        np.testing.assert_array_equal(load_audio(tmp_path / "loud.wav").numpy(), loud)
        ds[0]
        # in-range float audio and full-scale PCM (read as [-1, 1)) say nothing
        ds[1], ds[2]
        assert len([r for r in caplog.records if r.name == "maeast_fairseq.audio"]) == 1
    assert float(load_audio(tmp_path / "full_scale.wav").abs().max()) <= 1.0


def test_sample_rates_and_channels(tmp_path):
    """8 / 22.05 / 44.1 / 48 kHz, stereo and 6 channels: every clip is down-mixed and resampled to 16 kHz."""
    lines = [write_wav(tmp_path, "r8k.wav", 1.0, 8000), write_wav(tmp_path, "r22k.flac", 1.0, 22050, channels=2),
             write_wav(tmp_path, "r44k.wav", 1.0, 44100, channels=6), write_wav(tmp_path, "r48k.ogg", 1.0, 48000)]
    ds = FbankDataset(manifest(tmp_path, lines), FrontendConfig(), shuffle=False)
    for i in range(4):
        assert ds[i]["fbank"].shape == (98, 128) and torch.isfinite(ds[i]["fbank"]).all()
    # the manifest counts samples at the file's own rate: a 0.15 s clip at 8 kHz (1200 samples) is 13 frames at
    # 16 kHz, enough for a 10-frame patch, though 1200 samples *at 16 kHz* would give only 6 frames
    path = manifest(tmp_path, [write_wav(tmp_path, "short8k.wav", 0.15, 8000)], name="short.tsv")
    ds = FbankDataset(path, FrontendConfig(), min_frames=10)
    assert ds[0]["fbank"].shape == (13, 128)
    with pytest.raises(ValueError, match=r"short\.tsv:2: .*1200 samples at 8000 Hz \(0\.150 s\) = 13 frames, fewer than one "
                                         r"patch \(16 frames\)"):
        FbankDataset(path, FrontendConfig(), min_frames=16)


def test_clip_far_longer_than_the_maximum_is_cropped_when_decoded(tmp_path):
    long_line = write_wav(tmp_path, "long.wav", 20.0, 44100)  # 882000 samples
    path = manifest(tmp_path, [write_wav(tmp_path, "short.wav", 0.5), long_line])
    fixed = FrontendConfig(length_policy="fixed", target_frames=16)
    ds = FbankDataset(path, fixed, shuffle=False)
    assert ds.max_load_samples == 4 * (15 * 160 + 400)
    item = ds[1]["fbank"]
    assert item.shape == (68, 128)  # 4 crops' worth decoded, not the 1998 frames of 20 s
    whole, _ = Fbank(ds.fbank.cfg)(load_audio(tmp_path / "long.wav") - load_audio(tmp_path / "long.wav").mean())
    torch.testing.assert_close(item, whole[:68], atol=2e-3, rtol=0)  # the same start of the clip
    x = ds.collater([ds[0], ds[1]])["net_input"]["fbank"]
    assert x.shape == (2, 16, 128)
    clip = read_clip(tmp_path / "long.wav", SR, max_samples=1000)
    assert clip.cropped and clip.num_frames == 882000 and clip.sample_rate == 44100 and clip.wav.shape == (1000,)

    crop = FrontendConfig(length_policy="crop_to_shortest", norm="none")
    assert FbankDataset(path, FrontendConfig(length_policy="crop_to_shortest", max_frames=20)).max_load_samples
    ds = FbankDataset(path, crop, shuffle=False)  # no cap under crop_to_shortest without max_frames ...
    assert ds.max_load_samples is None
    with pytest.raises(ValueError) as err:  # ... so batching refuses what no batch could hold, naming the line
        ds.batch_by_size(np.arange(2), max_tokens=100000)
    msg = str(err.value)
    assert "1 clip(s) longer than dataset.max_tokens=100000" in msg and "line 3: long.wav (882000)" in msg
    assert "task.max_sample_size=100000" in msg
    kept = FbankDataset(path, crop, max_sample_size=100000)  # the drop policy: counted and logged
    assert len(kept) == 1 and len(kept.batch_by_size(np.arange(1), max_tokens=100000)) == 1


# --------------------------------------------------------------------------------------------------------- labels
@pytest.fixture
def labelled(tiny_corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    return data


def test_label_file_with_another_line_count(labelled):
    lines = (labelled / "train.lbl").read_text().splitlines()
    (labelled / "train.lbl").write_text("\n".join(lines[:-2]) + "\n")
    task = classification_task(labelled)
    with pytest.raises(ManifestError) as err:
        task.load_dataset("train")
    msg = str(err.value)
    assert msg.startswith(f"{labelled / 'train.lbl'}: has {len(lines) - 2} label lines but ")
    assert f"{labelled / 'train.tsv'} has {len(lines)} clips" in msg and "one line per clip" in msg
    os.remove(labelled / "train.lbl")
    with pytest.raises(ManifestError, match=r"train\.lbl: file not found; it holds one line of labels per clip of "
                                            r".*train\.tsv; write it with `maeast-manifest"):
        task.load_dataset("train")
    os.remove(labelled / "labels.txt")
    with pytest.raises(ManifestError, match=r"labels\.txt: file not found; it lists the labels"):
        classification_task(labelled)


def test_empty_label_lines(labelled, caplog):
    lines = (labelled / "train.lbl").read_text().splitlines()
    lines[2] = ""
    lines[5] = ""
    (labelled / "train.lbl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"train\.lbl: line 3: no label for .*multi_label=false needs exactly "
                                            r"one label per clip; fix the line or set task.multi_label=true"):
        classification_task(labelled).load_dataset("train")
    # multi-label data: an empty line is a clip with no positive label, counted in the log
    with caplog.at_level(logging.INFO, logger="maeast_fairseq.data.labelled_dataset"):
        task = classification_task(labelled, multi_label=True)
        task.load_dataset("train")
    assert "2 clips without a label" in caplog.text
    assert task.datasets["train"].collater([task.datasets["train"][2]])["target"].sum() == 0


# ------------------------------------------------------------------------------------------ config and checkpoints
def test_checkpoint_of_another_model_type_names_both_types(labelled, tmp_path):
    path = tmp_path / "wav2vec2.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2", "encoder_layers": 12}, "task": {"_name": "audio_pretraining"}},
                "model": {"w2v_encoder.proj.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError) as err:
        classification_task(labelled, model_path=str(path))
    msg = str(err.value)
    assert f"model.model_path={path} is a 'wav2vec2' model" in msg
    assert "mae_ast" in msg and "ssast" in msg and "eat" in msg and "maeast_classifier" in msg
    with pytest.raises(CheckpointError) as err:
        load_pretrained(str(path))
    assert str(path) in str(err.value) and "'wav2vec2'" in str(err.value) and "mae_ast" in str(err.value)
    torch.save({"w2v_encoder.proj.weight": torch.zeros(2, 2)}, tmp_path / "raw.pt")  # a bare state dict
    with pytest.raises(ValueError, match=r"raw\.pt is not a fairseq checkpoint of this project"):
        classification_task(labelled, model_path=str(tmp_path / "raw.pt"))


def _tiny_fairseq_models():
    from maeast_fairseq.models.eat import EatModel, EatModelConfig
    from maeast_fairseq.models.mae_ast import MaeAstModel, MaeAstModelConfig
    from maeast_fairseq.models.ssast import SsastModel, SsastModelConfig

    torch.manual_seed(0)
    return {
        "mae_ast": MaeAstModel(MaeAstModelConfig(**tiny_kwargs("mae_ast"))),
        "ssast": SsastModel(SsastModelConfig(**tiny_kwargs("ssast", target_frames=256))),
        "eat": EatModel(EatModelConfig(**tiny_kwargs("eat", embed_dim=32, ffn_dim=128, decoder_embed_dim=32,
                                                     decoder_layers=1, clones=2))),
    }


def test_restore_of_a_checkpoint_of_another_model_type_names_both_types():
    """What fairseq's trainer does on resume (checkpoint.restore_file, or checkpoint_last.pt of a reused save_dir):
    model.load_state_dict(state["model"], strict=True, model_cfg=...), here in-process for every pair of types."""
    from maeast_fairseq.models.classifier import ClassifierModel, ClassifierModelConfig
    from maeast_fairseq.models.shell import ForeignStateDictError, guess_model_type, registered_name

    models = _tiny_fairseq_models()
    for own, model in models.items():
        assert registered_name(model) == own
        assert guess_model_type(model.state_dict()) == own  # the signatures read from the classes are current
        for other, source in models.items():
            if other == own:
                model.load_state_dict(source.state_dict(), strict=True, model_cfg=None)
                continue
            with pytest.raises(ForeignStateDictError) as err:
                model.load_state_dict(source.state_dict(), strict=True, model_cfg=None)
            msg = str(err.value)
            assert f"holds the weights of a model of type '{other}' (its keys have " in msg, msg
            assert f"but this run's model is '{own}'" in msg and "Missing keys: " in msg and "Unexpected keys: " in msg
            assert "start a new run (an empty checkpoint.save_dir" in msg
            assert f"point checkpoint.restore_file at a checkpoint of this '{own}' configuration" in msg
            assert "set model.model_path=<it>" in msg

    # inside fairseq's loaders the checkpoint (file name, cfg.model._name) is at hand: its word wins over the keys
    filename = "/runs/eat/checkpoint_last.pt"
    state = {"cfg": {"model": {"_name": "eat"}}, "model": models["eat"].state_dict()}
    with pytest.raises(ForeignStateDictError, match=r"checkpoint /runs/eat/checkpoint_last\.pt holds the weights of a "
                                                    r"model of type 'eat' \(its cfg\.model\._name\), but this run's "
                                                    r"model is 'ssast'") as err:
        models["ssast"].load_state_dict(state["model"], strict=True, model_cfg=None)
    assert filename in str(err.value)

    # weights of no type of ours: most keys missing
    with pytest.raises(ForeignStateDictError, match=r"does not hold the weights of this 'mae_ast' model: only 0 of its "
                                                    r"49 keys are there.*w2v_encoder\.proj\.weight"):
        models["mae_ast"].load_state_dict({"w2v_encoder.proj.weight": torch.zeros(2, 2)})
    # the same type of another size is torch's strict error (it lists the keys and shapes), not ours
    from maeast_fairseq.models.mae_ast import MaeAstModel, MaeAstModelConfig

    bigger = MaeAstModel(MaeAstModelConfig(encoder_layers=3, embed_dim=32, ffn_dim=64, num_heads=4, decoder_layers=1,
                                           decoder_embed_dim=32, decoder_ffn_dim=64, decoder_heads=4))
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"encoder\.blocks\.2\.") as err:
        models["mae_ast"].load_state_dict(bigger.state_dict())
    assert not isinstance(err.value, ForeignStateDictError)
    models["mae_ast"].load_state_dict(bigger.state_dict(), strict=False)  # non-strict loads are not checked

    # fine-tuning resumed from a pretraining checkpoint (restore_file where model.model_path was meant)
    from maeast_fairseq.checkpoint import classifier_from_pretrained

    pre = {"cfg": {"model": dict(models["mae_ast"].cfg.__dict__, _name="mae_ast")},
           "model": models["mae_ast"].state_dict()}
    clf = classifier_from_pretrained(ClassifierModelConfig(num_classes=3, target_frames=128, class_names=list("abc")),
                                     pre, "mae_ast.pt", model_cls=ClassifierModel)
    clf.load_state_dict(clf.state_dict())
    assert guess_model_type(clf.state_dict()) == "maeast_classifier"
    with pytest.raises(ForeignStateDictError, match=r"type 'mae_ast' .*but this run's model is 'maeast_classifier'.*"
                                                    r"set model\.model_path=<it>"):
        clf.load_state_dict(models["mae_ast"].state_dict(), strict=True, model_cfg=None)
    with pytest.raises(ForeignStateDictError, match=r"type 'maeast_classifier' .*model is 'eat'"):
        models["eat"].load_state_dict(clf.state_dict())


@pytest.mark.slow
def test_unknown_config_key_through_fairseq_hydra_train(tiny_corpus, tmp_path):
    proc = subprocess.run(
        [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples", "pretrain"),
         "--config-name", "mae_ast_patch_tiny", f"task.data={tiny_corpus}", "model.no_such_key=1",
         f"hydra.run.dir={tmp_path / 'run'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}"],
        cwd=str(tmp_path), env=fairseq_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Could not override 'model.no_such_key'" in out  # hydra names the key ...
    assert "num_updates" not in out and not (tmp_path / "ckpt").exists()  # ... before anything trains


def test_lossy_codec_overshoot_is_not_mistaken_for_unscaled_pcm(tmp_path, caplog):
    """Ogg Vorbis decoders ring a little past full scale (peak ~1.05 for a clipped master): no warning; an Ogg file
    whose peak says 'integer samples' still warns."""
    import soundfile as sf
    t = np.arange(16000) / 16000
    square = np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32)  # full-scale square: the decoder overshoots
    sf.write(tmp_path / "clipped.ogg", square, 16000, format="OGG", subtype="VORBIS")
    assert float(load_audio(tmp_path / "clipped.ogg").abs().max()) > 1.0  # the overshoot is real
    with caplog.at_level(logging.WARNING, logger="maeast_fairseq.audio"):
        load_audio(tmp_path / "clipped.ogg")
        assert not [r for r in caplog.records if r.name == "maeast_fairseq.audio"]
        with sf.SoundFile(tmp_path / "clipped.ogg") as f:  # the same codec, samples 3x too large
            sf.write(tmp_path / "unscaled.ogg", 3 * f.read(dtype="float32"), 16000, format="OGG",
                     subtype="VORBIS")
        load_audio(tmp_path / "unscaled.ogg")
        warned = [r.getMessage() for r in caplog.records if r.name == "maeast_fairseq.audio"]
        assert len(warned) == 1 and "unscaled.ogg" in warned[0]
