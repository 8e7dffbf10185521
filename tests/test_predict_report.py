"""``maeast-predict`` on manifests and folders: the test report (accuracy / mAP, per-class precision and recall, the
confusion matrix) against an independent computation with scikit-learn on the written ``predictions.csv``; and a
fine-tuned checkpoint built without fairseq (a tiny MAE-AST encoder with a random head)."""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_core, tiny_kwargs

from maeast_fairseq.checkpoint import classifier_from_pretrained
from maeast_fairseq.cli import predict as predict_cli
from maeast_fairseq.core.classifier import ClassifierConfig
from maeast_fairseq.data.synthetic import make_corpus

KINDS = ("chirp", "clicks", "noise", "tone")
FRONTEND = dict(sample_rate=16000, num_mel_bins=128, window_type="povey", subtract_waveform_mean=False, norm="none",
                norm_mean=-4.2677393, norm_std=4.5689974, length_policy="fixed", target_frames=128, max_frames=0,
                padding_mask=True)


def save_classifier(path, classes, multi_label=False, seed=0):
    """A fine-tuned checkpoint as the task writes it (cfg.model with encoder and front end, cfg.task), whose head is
    random with a spread large enough that the predictions differ between clips."""
    core = tiny_core("mae_ast", seed=seed)
    pre = {"cfg": {"model": dict(tiny_kwargs("mae_ast"), _name="mae_ast")}, "model": core.state_dict()}
    cfg = ClassifierConfig(num_classes=len(classes), target_frames=FRONTEND["target_frames"],
                           class_names=list(classes), multi_label=multi_label)
    model = classifier_from_pretrained(cfg, pre, "tiny.pt")
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 3.0)
        model.head.bias.normal_(0.0, 0.5)
        model.encoder.input_norm.running_mean.fill_(-6.0)
        model.encoder.input_norm.running_var.fill_(16.0)
    model_cfg = dict(dataclasses.asdict(cfg), _name="maeast_classifier", frontend=dict(FRONTEND))
    task = dict(FRONTEND, _name="maeast_classification", multi_label=multi_label)
    torch.save({"cfg": {"model": model_cfg, "task": task, "criterion": {"loss": "auto"}},
                "model": model.state_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 clips of 0.6-1.8 s (16 / 22.05 kHz) in one folder per kind, a manifest of them and its .lbl."""
    root = tmp_path_factory.mktemp("predict_report")
    made = make_corpus(str(root / "audio"), 16, seed=3, seconds=(0.6, 1.8), rates=(16000, 22050), kinds=KINDS)
    data = root / "data"
    data.mkdir()
    import soundfile as sf

    lines = [str(root / "audio")]
    for path, _ in made:
        lines.append(f"{os.path.relpath(path, root / 'audio')}\t{sf.info(path).frames}")
    (data / "test.tsv").write_text("\n".join(lines) + "\n")
    (data / "test.lbl").write_text("".join(f"{kind}\n" for _, kind in made))
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_matches_scikit_learn_on_the_written_csv(corpus, tmp_path, capsys):
    metrics = pytest.importorskip("sklearn.metrics")
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    out = tmp_path / "report"
    assert predict_cli.main([ckpt, str(corpus / "data" / "test.tsv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 16 == report["clips"]
    true = [r["true"] for r in rows]
    pred = [r["predicted"] for r in rows]
    assert true == (corpus / "data" / "test.lbl").read_text().split()
    assert len(set(pred)) > 1, "a random head should not give one class to every clip"
    probs = np.array([[float(r[f"prob_{c}"]) for c in KINDS] for r in rows])
    assert [KINDS[i] for i in probs.argmax(1)] == pred
    # the report against scikit-learn on the CSV (the same 16 decisions: equal up to float64 rounding of a ratio)
    assert report["metric"] == "accuracy"
    assert report["value"] == pytest.approx(metrics.accuracy_score(true, pred), abs=1e-12)
    assert report["confusion"] == metrics.confusion_matrix(true, pred, labels=list(KINDS)).tolist()
    p, r, f1, support = metrics.precision_recall_fscore_support(true, pred, labels=list(KINDS), zero_division=np.nan)
    for j, row in enumerate(report["per_class"]):
        assert row["class"] == KINDS[j] and row["support"] == support[j]
        for mine, ref in ((row["precision"], p[j]), (row["recall"], r[j]), (row["f1"], f1[j])):
            assert (mine is None and np.isnan(ref)) or mine == pytest.approx(ref, abs=1e-12)
    assert f"test accuracy: {100 * report['value']:.2f} %" in printed and "confusion matrix" in printed
    conf_csv = list(csv.reader(open(out / "confusion.csv")))
    assert [list(map(int, row[1:])) for row in conf_csv[1:]] == report["confusion"]
    pytest.importorskip("matplotlib")
    assert (out / "confusion.png").stat().st_size > 0


def test_a_folder_with_labels_from_parent_gives_the_same_report(corpus, tmp_path):
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    assert predict_cli.main([ckpt, str(corpus / "data" / "test.tsv"), "--out", str(tmp_path / "a")]) == 0
    assert predict_cli.main([ckpt, str(corpus / "audio"), "--labels-from", "parent", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    key = lambda rows: sorted((os.path.basename(r["file"]), r["predicted"], r["true"]) for r in rows)  # noqa: E731
    assert key(read_csv(tmp_path / "a" / "predictions.csv")) == key(read_csv(tmp_path / "b" / "predictions.csv"))
    assert (a["value"], a["confusion"]) == (b["value"], b["confusion"])


def test_multi_label_map_and_thresholded_scores_match_scikit_learn(corpus, tmp_path):
    metrics = pytest.importorskip("sklearn.metrics")
    classes = list(KINDS) + ["noisy", "tonal"]
    family = {"chirp": "tonal", "tone": "tonal", "noise": "noisy", "clicks": "noisy"}
    data = tmp_path / "ml"
    data.mkdir()
    (data / "test.tsv").write_text((corpus / "data" / "test.tsv").read_text())
    kinds = (corpus / "data" / "test.lbl").read_text().split()
    (data / "test.lbl").write_text("".join(f"{k},{family[k]}\n" for k in kinds))
    ckpt = save_classifier(tmp_path / "ft_ml.pt", classes, multi_label=True)
    out = tmp_path / "report"
    assert predict_cli.main([ckpt, str(data / "test.tsv"), "--out", str(out), "--threshold", "0.5"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = read_csv(out / "predictions.csv")
    y = np.array([[c in r["true"].split(",") for c in classes] for r in rows], dtype=int)
    scores = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    has_pos = y.sum(0) > 0
    ref_map = metrics.average_precision_score(y[:, has_pos], scores[:, has_pos], average="macro")
    # the CSV holds the float32 probabilities exactly (9 digits): the same ranking, the same AP
    assert report["metric"] == "mAP" and report["value"] == pytest.approx(ref_map, abs=1e-12)
    decided = (scores >= 0.5).astype(int)
    assert [r["predicted"] for r in rows] == [",".join(c for c, d in zip(classes, row) if d) for row in decided]
    p, r, _, support = metrics.precision_recall_fscore_support(y, decided, zero_division=np.nan)
    for j, row in enumerate(report["per_class"]):
        assert row["support"] == support[j]
        assert (row["precision"] is None and np.isnan(p[j])) or row["precision"] == pytest.approx(p[j], abs=1e-12)
        assert (row["recall"] is None and np.isnan(r[j])) or row["recall"] == pytest.approx(r[j], abs=1e-12)
    assert "confusion" not in report and not (out / "confusion.csv").exists()


def test_audio_files_without_labels_print_top_labels_and_write_no_report(corpus, tmp_path, capsys):
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    wav = str(sorted((corpus / "audio" / "tone").glob("*.wav"))[0])
    assert predict_cli.main([ckpt, wav, "--top", "2", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == wav and len(lines) == 3
    assert (tmp_path / "o" / "predictions.csv").is_file() and not (tmp_path / "o" / "report.json").exists()


def test_unknown_label_names_the_file_and_line(corpus, tmp_path, capsys):
    ckpt = save_classifier(tmp_path / "ft.pt", KINDS)
    data = tmp_path / "bad"
    data.mkdir()
    (data / "test.tsv").write_text((corpus / "data" / "test.tsv").read_text())
    labels = (corpus / "data" / "test.lbl").read_text().split()
    labels[2] = "banjo"
    (data / "test.lbl").write_text("\n".join(labels) + "\n")
    assert predict_cli.main([ckpt, str(data / "test.tsv")]) == 2
    assert f"{data / 'test.lbl'}:3: label(s) ['banjo']" in capsys.readouterr().err
