"""SUPERB-style evaluation (maeast-evaluate): heads, the pooled-feature cache, k-fold rule, the command end to end."""
import json
import os
import statistics
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, console, fairseq_env

from maeast_fairseq.cli import evaluate as cli
from maeast_fairseq.data.manifest import write_label_list, write_labels, write_manifest
from maeast_fairseq.evaluation import features
from maeast_fairseq.evaluation.superb import (
    PROTOCOL_LABELS,
    PooledClassifier,
    SuperbHead,
    TrainConfig,
    WeightedLayerSum,
    average_precision,
    fold_roles,
    mean_average_precision,
    train_heads,
)
from maeast_fairseq.evaluation.superb import evaluate as evaluate_head

PITCHES = {f"p{k}": 200.0 * 2 ** (k / 2) for k in range(8)}  # 8 pitch classes, half an octave apart
SIZES = {"train": 64, "valid": 32, "test": 48}


@pytest.fixture(autouse=True)
def one_thread():
    """The heads are tiny: one CPU thread is faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Pure tones of 8 pitch classes (+-5 % detuned, random phase, level and length 0.8-1.5 s) at 16 kHz:
    train / valid / test manifests with labels, and a 4-fold id file for the train split."""
    root = tmp_path_factory.mktemp("tones")
    os.makedirs(root / "audio")
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        entries, labels = [], []
        for i in range(n):
            label = list(PITCHES)[i % len(PITCHES)]
            t = np.arange(int(rng.uniform(0.8, 1.5) * 16000)) / 16000
            f0 = PITCHES[label] * rng.uniform(0.95, 1.05)
            x = rng.uniform(0.1, 0.8) * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
            x += 3e-3 * rng.standard_normal(len(t))
            rel = f"audio/{split}_{i:03d}.wav"
            sf.write(str(root / rel), x.astype(np.float32), 16000)
            entries.append((rel, len(t)))
            labels.append([label])
        write_manifest(root / f"{split}.tsv", str(root), entries)
        write_labels(root / f"{split}.lbl", labels)
    write_label_list(root / "labels.txt", list(PITCHES))
    (root / "folds.txt").write_text("".join(f"{1 + (i // 8) % 4}\n" for i in range(SIZES["train"])))
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tones, tmp_path_factory):
    """A tiny MAE-AST patch model pretrained for 20 updates on the tone clips through fairseq-hydra-train."""
    pytest.importorskip("fairseq")
    work = tmp_path_factory.mktemp("pretrain")
    cmd = [console("fairseq-hydra-train"), "--config-dir", os.path.join(REPO, "examples/pretrain"),
           "--config-name", "mae_ast_patch_tiny", f"task.data={tones}", f"checkpoint.save_dir={work / 'ckpt'}",
           f"hydra.run.dir={work / 'hydra'}", "optimization.max_update=20", "dataset.disable_validation=true",
           "checkpoint.save_interval_updates=0"]
    proc = subprocess.run(cmd, cwd=work, env=fairseq_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "ckpt" / "checkpoint_last.pt"


def evaluate(tmp_path, upstream, data, *extra, name="out.json"):
    out = tmp_path / name
    rc = cli.main([upstream, "--data", str(data), "--cache", str(tmp_path / "cache"), "--json", str(out),
                   "--quiet", "--threads", "1", *extra])
    assert rc == 0
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------------- the pieces
def test_weighted_sum_starts_uniform():
    ws = WeightedLayerSum(5)
    assert torch.equal(ws.weights.detach(), torch.zeros(5))
    assert torch.allclose(ws.normalised_weights(), torch.full((5,), 0.2))
    h = torch.randn(3, 5, 7)
    assert torch.allclose(ws(h), h.mean(1), atol=1e-6)
    assert torch.allclose(ws([h[:, i] for i in range(5)]), h.mean(1), atol=1e-6)
    ws(h).sum().backward()
    assert ws.weights.grad is not None


@pytest.mark.parametrize("layer_norm", [False, True])
def test_superb_head_on_frames_equals_head_on_cached_means(layer_norm):
    """Linear(D,256) -> mean over valid frames -> Linear(256,C) on full frame sequences == the same head on the
    cached per-layer means (logits and every gradient, layer weights included), padding honoured."""
    torch.manual_seed(0)
    b, layers, t, d, c = 4, 3, 11, 16, 5
    hidden = [torch.randn(b, t, d) * (i + 1) + i for i in range(layers)]
    lengths = torch.tensor([11, 7, 3, 1])
    padding = torch.arange(t)[None] >= lengths[:, None]
    hidden = [h.masked_fill(padding[..., None], 1e3) for h in hidden]  # garbage in the padding must not count

    full = PooledClassifier("superb", layers, d, c)
    with torch.no_grad():
        full.featurizer.weights.copy_(torch.randn(layers))
    pooled = PooledClassifier("superb", layers, d, c)
    pooled.load_state_dict(full.state_dict())
    full.featurizer.layer_norm = layer_norm

    frames = full.featurizer(torch.stack(hidden, dim=2))  # (B, T, D): weighted sum of every frame
    logits_full = full.head(frames, padding)
    sums, counts = features.pooled_sums(hidden, padding, layer_norm=layer_norm)
    means = (sums / counts[:, None, None]).float()  # what the cache stores: (B, L+1, D)
    logits_cached = pooled(means)
    assert torch.allclose(logits_full, logits_cached, atol=1e-5)
    target = torch.arange(b) % c
    torch.nn.functional.cross_entropy(logits_full, target).backward()
    torch.nn.functional.cross_entropy(logits_cached, target).backward()
    for (n, p), (_, q) in zip(full.named_parameters(), pooled.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), n
    # the head itself: mean pooling after the first Linear == the Linear of the mean
    head = SuperbHead(d, c)
    x = torch.randn(b, t, d)
    assert torch.allclose(head(x, padding), head.forward_pooled(features.pooled_sums([x], padding)[0][:, 0].float()
                                                                / lengths[:, None]), atol=1e-5)


def test_stacked_training_equals_a_plain_adam_loop():
    """The batched trainer (all lr x seed runs at once, own Adam + per-run clipping) follows the plain loop with
    torch.optim.Adam and clip_grad_norm_, and a run does not depend on the runs it is stacked with."""
    torch.manual_seed(1)
    x, y = torch.randn(40, 3, 24) * 3, torch.arange(40) % 4
    cfg = TrainConfig(protocol="superb", lr=1e-2, steps=30, batch_size=8, eval_every=10, grad_clip=0.5, seed=3)
    stacked = train_heads(x, y, x[:8], y[:8], 4, [cfg, TrainConfig(**{**cfg.__dict__, "lr": 1e-3, "seed": 4})])
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = PooledClassifier("superb", 3, 24, 4)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = []
    for _ in range(cfg.steps):
        if not perm:
            perm = torch.randperm(40, generator=gen).split(8)
            perm = list(perm)
        idx = perm.pop(0)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    last = dict(model.named_parameters())
    # the stacked run kept its best dev state; compare the final state through a rerun with eval at the last step
    cfg_last = TrainConfig(**{**cfg.__dict__, "eval_every": 10 ** 6})
    alone = train_heads(x, y, x[:1], y[:1], 4, [cfg_last])[0].model
    for n, p in alone.named_parameters():
        assert torch.allclose(p, last[n], atol=1e-5), n
    # HEAR MLP (BatchNorm, dropout): the same run alone or stacked with others
    hcfg = TrainConfig(protocol="hear-mlp", lr=1e-3, steps=6, batch_size=8, eval_every=3, grad_clip=0.0, seed=5)
    one = train_heads(x, y, x[:8], y[:8], 4, [hcfg])[0]
    two = train_heads(x, y, x[:8], y[:8], 4, [TrainConfig(**{**hcfg.__dict__, "seed": 9}), hcfg])[1]
    for (n, p), (_, q) in zip(one.model.state_dict().items(), two.model.state_dict().items()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), n
    # the kept module (eval mode: BatchNorm running statistics) scores dev as the stacked evaluation did
    ev = evaluate_head(one.model, x[:8], y[:8], multilabel=False)
    assert ev["metric"] == pytest.approx(one.dev_metric) and ev["loss"] == pytest.approx(one.dev_loss, rel=1e-4)
    assert stacked[0].layer_weights is not None and abs(sum(stacked[0].layer_weights) - 1) < 1e-6


def test_fold_rule():
    assert fold_roles(0, 5) == {"test": [0], "valid": [1], "train": [2, 3, 4]}
    assert fold_roles(4, 5) == {"test": [4], "valid": [0], "train": [1, 2, 3]}
    roles = [fold_roles(k, 4) for k in range(4)]
    assert sorted(r["test"][0] for r in roles) == [0, 1, 2, 3] and sorted(r["valid"][0] for r in roles) == [0, 1, 2, 3]
    for r in roles:
        assert sorted(r["test"] + r["valid"] + r["train"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        fold_roles(0, 2)


def test_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    target = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: one positive at rank 2 -> 1/2
    ap = average_precision(scores, target)
    assert torch.allclose(ap, torch.tensor([(1 + 2 / 3) / 2, 0.5], dtype=torch.float64))
    assert mean_average_precision(scores, target) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    # one definition for the project (maeast_fairseq.core.metrics, fractions, tied scores one threshold)
    from maeast_fairseq.core import metrics

    assert (average_precision, mean_average_precision) == (metrics.average_precision, metrics.mean_average_precision)


def test_shuffle_is_a_permutation_independent_of_the_class():
    y = torch.arange(64) % 8
    s = cli.shuffle_labels(y, 0)
    assert torch.equal(torch.bincount(s), torch.bincount(y))
    for c in range(8):  # every true class gets every label once: no information left
        assert torch.equal(torch.bincount(s[y == c], minlength=8), torch.ones(8, dtype=torch.long))


# --------------------------------------------------------------------------------------------------- the command
def test_logmel_superb_reaches_95_labels_json_and_caches(tones, tmp_path):
    before = dict(features.STATS)
    out = evaluate(tmp_path, "logmel", tones, "--steps", "300", "--lr-sweep", "1e-3,1e-4")
    assert out["test"]["mean"] >= 0.95, out["test"]
    assert out["protocol"] == PROTOCOL_LABELS["superb"] == "frozen / weighted-sum / linear (SUPERB head)"
    assert out["test"]["protocol"] == out["protocol"] and out["test"]["upstream"] == "logmel"
    assert out["metric"] == "accuracy" and out["test"]["split"] == "test" and out["test"]["n"] == 3
    assert {k: v["clips"] for k, v in out["splits"].items()} == {"train": 64, "dev": 32, "test": 48}
    assert out["seeds"] == [0, 1, 2] and out["chance"] == pytest.approx(1 / 8)
    assert out["result"]["selected_lr"] in (1e-3, 1e-4) and len(out["result"]["per_lr"]) == 2
    assert out["result"]["layer_weights"]["mean_over_seeds"] == [pytest.approx(1.0)]
    assert "not comparable" in out["note"]
    assert features.STATS["extracted"] - before["extracted"] == 3
    assert all(v["source"] == "extracted" for v in out["features"]["cache"].values())
    # a second run reads every split from the cache and gives the same numbers
    again = evaluate(tmp_path, "logmel", tones, "--steps", "300", "--lr-sweep", "1e-3,1e-4", name="again.json")
    assert features.STATS["extracted"] - before["extracted"] == 3
    assert features.STATS["cache_hits"] - before["cache_hits"] == 3
    assert all(v["source"] == "cache" for v in again["features"]["cache"].values())
    assert again["test"]["values"] == out["test"]["values"]


def test_shuffled_labels_stay_near_chance(tones, tmp_path):
    out = evaluate(tmp_path, "logmel", tones, "--steps", "300", "--shuffle-labels",
                   "--seeds", "0,1,2,3,4,5,6,7,8,9")
    assert "CONTROL" in out["protocol"]
    assert abs(out["test"]["mean"] - out["chance"]) <= 0.10, (out["test"], out["chance"])


@pytest.mark.slow
def test_pretrained_checkpoint_and_random_init(tones, tiny_checkpoint, tmp_path):
    out = evaluate(tmp_path, str(tiny_checkpoint), tones, "--steps", "300")
    assert out["test"]["mean"] >= 0.95, out["test"]
    up = out["upstream"]
    assert up["kind"] == "checkpoint" and up["layers"] == 3 and up["dim"] == 8 * 64  # 8 frequency patches x 64
    assert up["frame_rate_hz"] == pytest.approx(100 / 16)
    w = out["result"]["layer_weights"]["mean_over_seeds"]
    assert len(w) == 3 and sum(w) == pytest.approx(1.0)
    rnd = evaluate(tmp_path, f"random:{tiny_checkpoint}", tones, "--steps", "50", "--seeds", "0", name="rnd.json")
    assert rnd["upstream"]["kind"] == "random" and "RANDOM-INIT" in rnd["upstream"]["label"]
    assert rnd["upstream"]["layers"] == 3 and rnd["upstream"]["dim"] == 8 * 64
    paths = {k: v["path"] for k, v in out["features"]["cache"].items()}
    rpaths = {k: v["path"] for k, v in rnd["features"]["cache"].items()}
    assert paths["train"] != rpaths["train"]
    pre = torch.load(paths["train"], weights_only=True)["means"]
    ran = torch.load(rpaths["train"], weights_only=True)["means"]
    assert pre.shape == ran.shape and not torch.allclose(pre[:, 1:], ran[:, 1:])


def test_kfold_hear_mlp(tones, tmp_path):
    out = evaluate(tmp_path, "logmel", tones, "--folds", "4", "--fold-file", str(tones / "folds.txt"),
                   "--fold-split", "train", "--steps", "40", "--eval-every", "20", "--seeds", "0")
    assert out["protocol"] == "frozen / weighted-sum / HEAR MLP" and out["protocol_id"] == "hear-mlp"
    assert out["training"]["steps"] == 40 and out["lrs"] == [1e-3]
    folds = out["folds"]
    assert len(folds) == 4
    for k, f in enumerate(folds):
        assert f["test_fold"] == f"train[fold {k + 1}]" and f["valid_fold"] == f"train[fold {(k + 1) % 4 + 1}]"
        assert f["train_folds"] == [f"train[fold {j + 1}]" for j in fold_roles(k, 4)["train"]]
        assert f["sizes"] == {"train": 32, "valid": 16, "test": 16}
    assert out["test"]["split"] == "4-fold cross-validation" and 0 <= out["test"]["mean"] <= 1
    assert out["test"]["mean"] > out["chance"] + 0.3


def test_kfold_summary_separates_fold_and_seed_spread_per_class_and_figure(tones, tmp_path):
    out = evaluate(tmp_path, "logmel", tones, "--folds", "4", "--fold-file", str(tones / "folds.txt"),
                   "--fold-split", "train", "--steps", "40", "--eval-every", "20", "--seeds", "0,1",
                   "--shuffle-labels")  # the control: scores that differ between folds and seeds
    t = out["test"]
    values = [f["test"]["values"] for f in out["folds"]]  # [fold][seed]
    fold_means = [statistics.fmean(v) for v in values]
    seed_means = [statistics.fmean(v[s] for v in values) for s in range(2)]
    assert [p["mean"] for p in t["per_fold"]] == pytest.approx(fold_means)
    assert [p["values"] for p in t["per_fold"]] == values
    assert t["mean"] == pytest.approx(statistics.fmean(sum(values, [])))
    assert t["std_over_folds"] == pytest.approx(statistics.stdev(fold_means))
    assert t["std_over_seeds"] == pytest.approx(statistics.stdev(seed_means)) and t["std"] == t["std_over_seeds"]
    assert (t["n_folds"], t["n_seeds"]) == (4, 2)
    assert (t["min_fold"], t["max_fold"]) == (pytest.approx(min(fold_means)), pytest.approx(max(fold_means)))
    # per class: a confusion matrix over every test clip of every fold, for both seeds
    pc = out["per_class"]
    conf = np.array(pc["confusion"])
    assert conf.shape == (8, 8) and conf.sum() == 2 * 64 and (conf.sum(1) == 2 * 8).all()
    assert np.trace(conf) / conf.sum() == pytest.approx(t["mean"])  # equal-sized folds: the same accuracy
    for j, row in enumerate(pc["classes"]):
        assert row["support"] == 8 and row["recall"] == pytest.approx(conf[j, j] / conf[j].sum())
    assert out["figure"] == str(tmp_path / "out.png") and (tmp_path / "out.png").stat().st_size > 0


def test_single_split_reports_per_class_scores(tones, tmp_path):
    out = evaluate(tmp_path, "logmel", tones, "--steps", "100", "--seeds", "0", "--png", str(tmp_path / "f.png"))
    pc = out["per_class"]
    conf = np.array(pc["confusion"])
    assert conf.sum() == SIZES["test"] and np.trace(conf) / conf.sum() == pytest.approx(out["test"]["mean"])
    assert [r["class"] for r in pc["classes"]] == list(PITCHES)
    assert (tmp_path / "f.png").stat().st_size > 0


def test_per_class_scores_by_hand():
    # 2 seeds x 4 clips x 3 classes; true classes 0, 0, 1, 2
    y = torch.tensor([0, 0, 1, 2])
    scores = torch.zeros(2, 4, 3)
    for s, predicted in enumerate(([0, 1, 1, 1], [0, 0, 1, 0])):
        scores[s, torch.arange(4), torch.tensor(predicted)] = 1.0
    pc = cli.per_class_scores(scores, y, ["a", "b", "c"], multilabel=False)
    assert pc["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 1, 0]]  # rows true, columns predicted, both seeds
    a, b, c = pc["classes"]
    assert (a["support"], a["recall"], a["precision"]) == (2, 3 / 4, 3 / 4) and a["f1"] == pytest.approx(3 / 4)
    assert (b["recall"], b["precision"]) == (1.0, 2 / 4) and b["f1"] == pytest.approx(2 / 3)
    # never predicted: no precision; F1 = 2 tp / (2 tp + fp + fn) = 0 (core.metrics' rule, as maeast-predict)
    assert (c["recall"], c["precision"], c["f1"]) == (0.0, None, 0.0)
    # multi-label: AP per class, mean over the seeds; None for a class without positives
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    ml = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.7, 0.5]],
                       [[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.8, 0.7, 0.5]]])
    rows = cli.per_class_scores(ml, targets, ["x", "y", "z"], multilabel=True)["classes"]
    # class x: seed 0 ranks the positives 1st and 3rd -> (1 + 2/3) / 2; seed 1 ranks them 1st and 2nd -> 1
    assert rows[0]["ap"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2) and rows[0]["support"] == 2
    assert rows[1]["ap"] == pytest.approx(1.0) and rows[2]["ap"] is None and rows[2]["support"] == 0
