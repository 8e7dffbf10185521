"""The demo pipeline end to end on a tiny synthetic corpus (no network): --audio-dir for pretraining audio and a
labelled --downstream-data folder; checks results.md / results.json and the PNG figures."""
import json
import os

import pytest

pytest.importorskip("fairseq")
pytest.importorskip("matplotlib")


def _labelled(root, data):
    import soundfile as sf

    from maeast_fairseq.data.manifest import write_label_list, write_labels, write_manifest
    from maeast_fairseq.data.synthetic import make_corpus

    os.makedirs(data, exist_ok=True)
    kinds = set()
    for split, seed, n in (("train", 10, 12), ("valid", 11, 6), ("test", 12, 6)):
        made = make_corpus(os.path.join(root, split), n, seed=seed, rates=(16000,), seconds=(0.6, 1.2))
        write_manifest(os.path.join(data, f"{split}.tsv"), str(root),
                       [(os.path.relpath(p, root), sf.info(p).frames) for p, _ in made])
        write_labels(os.path.join(data, f"{split}.lbl"), [[k] for _, k in made])
        kinds |= {k for _, k in made}
    write_label_list(os.path.join(data, "labels.txt"), sorted(kinds))


@pytest.mark.slow  # the demo pipeline: fairseq-hydra-train and maeast-evaluate subprocesses
def test_demo_end_to_end_offline(tmp_path, monkeypatch):
    from maeast_fairseq.cli import demo
    from maeast_fairseq.data.synthetic import make_corpus
    from maeast_fairseq.demo import fetch

    def no_network(*a, **k):
        raise AssertionError("the test must not fetch packages")

    monkeypatch.setattr(fetch, "fetch_packages", no_network)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    make_corpus(str(tmp_path / "audio"), 16, seed=0, seconds=(1.0, 2.0))
    _labelled(tmp_path / "labelled", str(tmp_path / "downstream"))
    out = tmp_path / "demo"
    rc = demo.main(["--recipe", "test", "--out", str(out), "--audio-dir", str(tmp_path / "audio"),
                    "--downstream-data", str(tmp_path / "downstream"), "--cache", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    ups = {r["upstream"] for r in res["rows"]}
    assert ups == {"mae_ast", "eat", "ssast", "random:mae_ast", "random:eat", "random:ssast", "logmel"}
    for r in res["rows"]:
        assert 0.0 <= r["mean"] <= 1.0 and len(r["values"]) == 3
        assert r["protocol"].startswith("frozen")
    assert set(res["verdicts"]) == {"mae_ast", "eat", "ssast"}
    assert res["pretraining"]["mae_ast"]["seconds"] > 0
    md = (out / "results.md").read_text()
    assert "not comparable" in md and "| MAE-AST (patch) | pretrained |" in md
    for png in ("loss_curves", "accuracy_vs_updates", "mae_ast_reconstruction", "ssast_reconstruction",
                "eat_mask_and_targets"):
        p = out / "figures" / f"{png}.png"
        assert p.is_file() and p.stat().st_size > 5000, png
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["precision"]["name"] == res["precision"]["evaluation"] == "fp32"  # 64 wide: auto gives fp32
    assert "upstream arithmetic: precision: float32" in md

    # accuracy against pretraining updates: the test recipe keeps the checkpoint at 1/2 of the 6 updates (3) and
    # evaluates it with head seeds 0,1; update 0 is the random-init twin, update 6 the last checkpoint
    rows = {r["upstream"]: r for r in res["rows"]}
    curve = res["accuracy_vs_updates"]
    for m in ("mae_ast", "eat", "ssast"):
        pts = [r for r in curve if r["method"] == m]
        assert [(r["updates"], r["upstream"], r["init"]) for r in pts] == [
            (0, f"random:{m}", "random init"), (3, f"{m}@3", "pretrained"), (6, m, "pretrained")]
        assert pts[0]["mean"] == rows[f"random:{m}"]["mean"] and pts[2]["mean"] == rows[m]["mean"]
        assert [r["seeds"] for r in pts] == ["0,1,2", "0,1", "0,1,2"] and len(pts[1]["values"]) == 2
        assert 0.0 <= pts[1]["mean"] <= 1.0 and pts[1]["fraction"] == 0.5
        # the pretraining clock at the save of update 3 lies between the start and the end of that pretraining
        assert 0 < pts[1]["pretraining_seconds"] <= pts[2]["pretraining_seconds"]
        title = {"mae_ast": "MAE-AST (patch)", "eat": "EAT", "ssast": "SSAST (patch)"}[m]
        assert f"| {title} | 3 | 50 %, " in md and f"| {title} | 0 | random init | 0,1,2 |" in md
        # the kept checkpoint is the model after exactly 3 updates: fairseq's update count and the optimizer's own
        # step counters (every Adam parameter state) say 3, and its weights are not the last ones
        point = res["pretraining"][m]["points"][0]
        assert point["updates"] == 3 and os.path.isfile(point["checkpoint"])
        assert _optimizer_steps(point["checkpoint"]) == {3}
        assert _optimizer_steps(res["pretraining"][m]["checkpoint"]) == {6}
        evals = json.loads((out / "eval" / f"{m}@3.json").read_text())
        assert evals["test"]["upstream"].endswith(os.path.basename(point["checkpoint"]))
        mid, last = (_weights(p) for p in (point["checkpoint"], res["pretraining"][m]["checkpoint"]))
        assert mid.keys() == last.keys() and any(not (mid[k] == last[k]).all() for k in mid)
        # the saves between the points are removed: left are the point's file and the last update's two names
        names = os.listdir(out / "checkpoints" / m)
        assert sorted(int(n.split("_")[2][:-3]) for n in names if n != "checkpoint_last.pt") == [3, 6], names


def _optimizer_steps(path):
    """Every ``step`` counter in a fairseq checkpoint's optimizer state (composite optimizers included)."""
    from maeast_fairseq.checkpoint import read_fairseq_file
    steps = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "step":
                    steps.add(int(v))
                else:
                    walk(v)
    walk(read_fairseq_file(path)["last_optimizer_state"])
    return steps


def _weights(path):
    from maeast_fairseq.checkpoint import read_fairseq_file
    return {k: v for k, v in read_fairseq_file(path)["model"].items() if v.is_floating_point()}


def _fake_kits(root, kits, seed=0):
    """Hydrogen-style kits: drumkit.xml + one synthetic wav per instrument (kick: low thump, snare: noise burst,
    hi-hat: high-passed noise), different per kit."""
    import numpy as np
    import soundfile as sf
    xml = ('<?xml version="1.0"?><drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>K</name>'
           '<instrumentList>{}</instrumentList></drumkit_info>')
    inst = "<instrument><name>{}</name><layer><filename>{}</filename></layer></instrument>"
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    for kit in kits:
        d = root / kit
        d.mkdir(parents=True)
        body = ""
        for name in ("Kick", "Snare", "Closed HH"):
            f0 = rng.uniform(40, 90)
            noise = rng.standard_normal(16000)
            decay = rng.uniform(4, 60)  # each kit's sounds differ in pitch, colour and decay
            hiss = np.convolve(noise, rng.standard_normal(int(rng.integers(2, 12))), mode="same")
            wav = {"Kick": np.sin(2 * np.pi * f0 * t) * np.exp(-decay / 4 * t),
                   "Snare": 0.5 * hiss * np.exp(-decay * t) + 0.3 * np.sin(2 * np.pi * 4 * f0 * t) * np.exp(-25 * t),
                   "Closed HH": np.diff(hiss, prepend=0) * 0.3 * np.exp(-2 * decay * t)}[name]
            ring = np.sin(2 * np.pi * rng.uniform(500, 6000) * t) * np.exp(-rng.uniform(2, 30) * t)
            fn = name.replace(" ", "_") + ".wav"
            sf.write(str(d / fn), (0.5 * wav + 0.2 * ring).astype("float32"), 16000)
            body += inst.format(name, fn)
        (d / "drumkit.xml").write_text(xml.format(body))


@pytest.mark.slow  # the demo pipeline: fairseq-hydra-train and maeast-evaluate subprocesses
def test_demo_drum_task_k_fold_over_kit_groups_offline(tmp_path, monkeypatch):
    """The demo's main path with fake Hydrogen kits: kit-grouped k-fold evaluation and the leak check."""
    from maeast_fairseq.cli import demo
    from maeast_fairseq.data.synthetic import make_corpus
    from maeast_fairseq.demo import fetch

    kits = ["KitA", "KitA2", "KitB", "KitB2", "KitC", "KitC2"]
    _fake_kits(tmp_path / "kits", kits)
    monkeypatch.setattr(fetch, "fetch_packages", lambda names, cache: {n: str(tmp_path / "kits") for n in names})
    monkeypatch.setattr(fetch, "KIT_FOLDS", (("a", ("KitA", "KitA2")), ("b", ("KitB", "KitB2")), ("c", ())))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from dataclasses import replace

    from maeast_fairseq.demo import pipeline

    # the intermediate checkpoints are the end-to-end test's business: none here (time)
    monkeypatch.setitem(pipeline.RECIPES, "test", replace(pipeline.RECIPES["test"], curve_fractions=()))
    make_corpus(str(tmp_path / "audio"), 16, seed=0, seconds=(1.0, 2.0))
    out = tmp_path / "demo"
    rc = demo.main(["--recipe", "test", "--out", str(out), "--audio-dir", str(tmp_path / "audio"),
                    "--cache", str(tmp_path / "cache"), "--methods", "mae_ast"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["downstream"]["folds"] == ["a", "b", "c"] and res["downstream"]["clips"] == {"a": 6, "b": 6, "c": 6}
    lc = res["leak_check"]
    assert lc["leak"] is False and lc["cross_fold_pairs_at_threshold"] == 0 and lc["vs_pretraining"]["clips"] == 18
    assert {r["upstream"] for r in res["rows"]} == {"mae_ast", "random:mae_ast", "logmel"}
    evals = json.loads((out / "eval" / "mae_ast.json").read_text())
    assert len(evals["folds"]) == 3  # every kit group was the test fold once
    md = (out / "results.md").read_text()
    assert "**a** KitA, KitA2 (6 clips)" in md and "no test recording is heard" in md


def test_drum_classes():
    from maeast_fairseq.demo.fetch import drum_class, kit_fold

    expect = {"Kick": "kick", "c3 - bass drum 1": "kick", "BassDrum": "kick", "Snare Rimshot": "snare",
              "Closed HH": "hihat", "Hi-Hat Open (Paiste)": "hihat", "Sabian Hat Choke": "hihat", "Side OHH": "hihat",
              "Floor Tom": "tom", "tomhi2": "tom", "Pearl Tom 1": "tom", "Crash/Ride Bell": "cymbal",
              "Ride Bell": "cymbal", "Zildjian Splash": "cymbal", "China (Paiste Alpha 18\")": "cymbal",
              "Stick": None, "Pearl Side Stick": None, "Cowbell": None, "Hand Clap": None, "Djembe1 Bass": None}
    assert {k: drum_class(k) for k in expect} == expect
    assert kit_fold("GMRockKit") == "rock" and kit_fold("ForzeeStereo") == "forzee"
    assert kit_fold("ColomboAcousticDrumkit") == kit_fold("Some New Kit") == "others"  # unnamed kits: the last fold
    # kits that share recordings are one fold (the leak check found the first pair)
    assert kit_fold("The Black Pearl 1.0") == kit_fold("The_Black_Pearl_1.0") == kit_fold("gmrockkit") == "rock"
    assert kit_fold("Millo_MultiLayered2") == kit_fold("Audiophob") == "millo"


def test_drum_kit_parsing(tmp_path):
    import numpy as np
    import soundfile as sf

    from maeast_fairseq.demo.fetch import find_kits, prepare_drums

    xml = ('<?xml version="1.0"?><drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>K</name>'
           '<instrumentList>{}</instrumentList></drumkit_info>')
    inst = "<instrument><name>{}</name><layer><filename>{}</filename></layer></instrument>"
    rng = np.random.default_rng(0)
    for kit in ("KitA", "ColomboAcousticDrumkit", "GMRockKit"):
        d = tmp_path / "kits" / kit
        d.mkdir(parents=True)
        body = ""
        for name in ("Kick", "Snare", "Closed HH", "Cowbell"):
            fn = name.replace(" ", "_") + ".wav"
            sf.write(str(d / fn), rng.standard_normal(8000).astype("float32") * 0.1, 44100)
            body += inst.format(name, fn)
        (d / "drumkit.xml").write_text(xml.format(body))
    folds = (("a", ("KitA",)), ("rock", ("GMRockKit",)), ("rest", ()))
    info = prepare_drums(find_kits([str(tmp_path / "kits")]), str(tmp_path / "out"), folds=folds)
    assert info["clips"] == {"a": 3, "rock": 3, "rest": 3} and info["folds"] == ["a", "rock", "rest"]
    assert info["classes"] == ["hihat", "kick", "snare"]
    assert info["kits"] == {"a": ["KitA"], "rock": ["GMRockKit"], "rest": ["ColomboAcousticDrumkit"]}
    data = tmp_path / "out" / "data"
    paths = data.joinpath("all.tsv").read_text().splitlines()[1:]
    ids = data.joinpath("folds.txt").read_text().split()
    lbl = data.joinpath("all.lbl").read_text().split()
    assert len(paths) == len(ids) == len(lbl) == 9
    for p, f, c in zip(paths, ids, lbl):  # a clip's fold is its kit's; its label its instrument's class
        assert f == {"KitA": "a", "GMRockKit": "rock", "ColomboAcousticDrumkit": "rest"}[p.split("/")[0]]
        assert p.split("\t")[0].endswith(f"_{c}.wav")
    with pytest.raises(Exception, match="no clips in fold"):
        prepare_drums(find_kits([str(tmp_path / "kits")]), str(tmp_path / "out2"),
                      folds=folds[:2] + (("empty", ("Nope",)), ("rest", ())))


def test_fetch_without_apt_says_so(tmp_path, monkeypatch):
    from maeast_fairseq.demo import fetch

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(fetch.FetchError, match="apt-get / dpkg not found.*AUDIO_DIR"):
        fetch.fetch_packages(["hydrogen-drumkits"], str(tmp_path))


def test_fetch_is_idempotent(tmp_path, monkeypatch):
    from maeast_fairseq.demo import fetch

    done = tmp_path / "pkgs" / "sonic-pi-samples"
    done.mkdir(parents=True)
    (done / ".unpacked").touch()
    monkeypatch.setattr(fetch, "_apt_download", lambda *a: pytest.fail("a cached package was downloaded again"))
    assert fetch.fetch_packages(["sonic-pi-samples"], str(tmp_path)) == {"sonic-pi-samples": str(done)}


def test_parse_train_line():
    from maeast_fairseq.demo.pipeline import parse_train_line

    line = ('[2026-11-22 00:59:05,675][train_inner][INFO] - {"epoch": 29, "loss": "4.5997", "frame_loss": "3.5745", '
            '"lr_default": "0.0001", "num_updates": "2000"}')
    rec = parse_train_line(line)
    assert rec["num_updates"] == 2000 and rec["loss"] == pytest.approx(4.5997) and rec["frame_loss"] > 3
    assert parse_train_line("[train][INFO] - {\"loss\": 1}") is None



def test_curve_updates_from_the_recipe_fractions():
    from maeast_fairseq.demo.pipeline import RECIPES, Recipe, curve_updates

    full = RECIPES["full"]
    assert {m: curve_updates(full, m) for m in full.updates} == {"mae_ast": [750, 1500], "eat": [250, 500],
                                                                 "ssast": [375, 750]}
    assert curve_updates(RECIPES["test"], "eat") == [3]
    # rounded, merged, and never 0 or the last update (those are the twin and the last checkpoint)
    r = Recipe("r", 1.0, updates={"m": 10}, curve_fractions=(0.01, 0.26, 0.3, 0.99))
    assert curve_updates(r, "m") == [3]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        curve_updates(Recipe("r", 1.0, updates={"m": 10}, curve_fractions=(0.5, 1.0)), "m")


def test_a_point_saved_only_as_checkpoint_last_is_copied_at_once(tmp_path):
    """fairseq writes no checkpoint_<epoch>_<update>.pt when the update ends an epoch, only checkpoint_last.pt (which
    the next save overwrites): the point's model is copied under the interval name as soon as the save is logged."""
    from maeast_fairseq.demo.pipeline import note_saved

    last, interval = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_3_60.pt"
    last.write_bytes(b"model after 120 updates")
    interval.write_bytes(b"model after 60 updates")
    saved = {}
    line = "[2026-01-01 00:00:00,000][fairseq.checkpoint_utils][INFO] - Saved checkpoint {} (epoch {} @ {} updates, " \
           "score None) (writing took 0.05 seconds)"
    note_saved(line.format(interval, 3, 60), [60, 120], saved, 12.34)
    assert saved == {60: {"updates": 60, "checkpoint": str(interval), "seconds": 12.3}}
    note_saved(line.format(last, 5, 120), [60, 120], saved, 20.0)  # the epoch-ending point
    assert saved[120]["checkpoint"] == str(tmp_path / "checkpoint_5_120.pt")
    assert (tmp_path / "checkpoint_5_120.pt").read_bytes() == b"model after 120 updates"
    last.write_bytes(b"model after 180 updates")  # the next save does not touch the copy
    assert (tmp_path / "checkpoint_5_120.pt").read_bytes() == b"model after 120 updates"
    note_saved(line.format(last, 7, 180), [60, 120], saved, 30.0)  # not a point; nor are other log lines
    note_saved("[train_inner] {\"num_updates\": \"60\"}", [60, 120], saved, 30.0)
    assert sorted(saved) == [60, 120] and len(list(tmp_path.iterdir())) == 3


def test_run_jobs_starts_a_job_after_its_dependency_and_never_more_than_the_slots():
    import threading
    import time

    from maeast_fairseq.demo.pipeline import Job, run_jobs

    lock, events, busy = threading.Lock(), [], [0, 0]  # (running now, most at once)

    def work(name, seconds, dep=None):
        with lock:
            events.append(("start", name))
            busy[0] += 1
            busy[1] = max(busy)
        time.sleep(seconds)
        with lock:
            events.append(("end", name))
            busy[0] -= 1
        return name if dep is None else f"{name}({dep})"

    jobs = [Job("p1", lambda: work("p1", 0.8)), Job("p2", lambda: work("p2", 0.05)),
            Job("p3", lambda: work("p3", 0.05)),
            Job("e1", lambda r: work("e1", 0.01, r), after="p1"), Job("e2", lambda r: work("e2", 0.01, r), after="p2"),
            Job("free", lambda: work("free", 0.01))]
    out = run_jobs(jobs, 2)
    assert out == {"p1": "p1", "p2": "p2", "p3": "p3", "e1": "e1(p1)", "e2": "e2(p2)", "free": "free"}
    assert busy[1] == 2
    order = [e for e in events if e[0] == "start"]
    assert order[:3] == [("start", "p1"), ("start", "p2"), ("start", "p3")]  # list order when ready: p3 before e2
    assert events.index(("end", "p1")) < events.index(("start", "e1"))
    assert events.index(("end", "p2")) < events.index(("start", "e2"))
    assert events.index(("start", "e2")) < events.index(("end", "p1"))  # e2 did not wait for the long p1

    def boom():
        raise RuntimeError("pretraining failed")
    ran = []
    with pytest.raises(RuntimeError, match="pretraining failed"):
        run_jobs([Job("a", boom), Job("b", lambda r: ran.append(r), after="a")], 2)
    assert ran == []
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_jobs([Job("a", boom, after="nope")], 2)

def _sf2(path, samples, rate=22050):
    """A minimal SoundFont 2 file: one smpl pool, shdr records (name, start, end, rate, type) + the EOS record."""
    import struct

    import numpy as np
    pool, hdrs, pos = [], [], 0
    for name, wav, kind in samples:
        pcm = np.round(np.asarray(wav) * 32767).astype("<i2")
        hdrs.append(struct.pack("<20sIIIIIBbHH", name.encode(), pos, pos + len(pcm), pos, pos + len(pcm), rate,
                                60, 0, 0, kind))
        pool.append(pcm.tobytes() + b"\0" * 92)  # SF2 wants >= 46 zero samples after each sample
        pos += len(pcm) + 46
    hdrs.append(struct.pack("<20sIIIIIBbHH", b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    sdta = chunk(b"LIST", b"sdta" + chunk(b"smpl", b"".join(pool)))
    pdta = chunk(b"LIST", b"pdta" + chunk(b"shdr", b"".join(hdrs)))
    info = chunk(b"LIST", b"INFO" + chunk(b"ifil", struct.pack("<HH", 2, 1)))
    body = b"sfbk" + info + sdta + pdta
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_soundfont_samples_are_written_as_wav(tmp_path):
    import numpy as np
    import soundfile as sf

    from maeast_fairseq.demo.fetch import FetchError, read_soundfont_samples, soundfont_samples

    t = np.arange(22050) / 22050
    kick = 0.8 * np.sin(2 * np.pi * 60 * t) * np.exp(-6 * t)
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    _sf2(tmp_path / "bank.sf2", [("Kick", kick, 1), ("Piano L", left, 4), ("Piano R", left, 2),
                                 ("Blip", kick[:2000], 1), ("Silent", np.zeros(22050), 1)])
    pool, headers = read_soundfont_samples(str(tmp_path / "bank.sf2"))
    assert [h[0] for h in headers] == ["Kick", "Piano L", "Piano R", "Blip", "Silent"]
    assert headers[0][3] == 22050 and headers[0][2] - headers[0][1] == 22050
    files = soundfont_samples(str(tmp_path / "bank.sf2"), str(tmp_path / "out"))
    # kept: mono + left channel; skipped: the right channel, the 0.09 s blip (< 0.3 s) and the silent sample
    assert [os.path.basename(f) for f in files] == ["0000.wav", "0001.wav"]
    wav, sr = sf.read(files[0])
    assert sr == 22050 and np.abs(wav - kick).max() < 1e-4
    assert soundfont_samples(str(tmp_path / "bank.sf2"), str(tmp_path / "out")) == files  # cached
    (tmp_path / "bad.sf2").write_bytes(b"RIFF\0\0\0\0WAVE")
    with pytest.raises(FetchError, match="not a SoundFont 2"):
        read_soundfont_samples(str(tmp_path / "bad.sf2"))


def test_sf3_bank_samples_are_decoded_from_ogg_vorbis(tmp_path):
    """An SF3 bank (MuseScore's): every sample is an Ogg Vorbis stream at byte offsets of the smpl chunk."""
    import io
    import struct

    import numpy as np
    import soundfile as sf

    from maeast_fairseq.demo.fetch import SF3_VORBIS, read_soundfont_samples, soundfont_samples

    t = np.arange(22050) / 22050
    kick = (0.8 * np.sin(2 * np.pi * 60 * t) * np.exp(-6 * t)).astype("float32")
    bell = (0.4 * np.sin(2 * np.pi * 880 * t) * np.exp(-2 * t)).astype("float32")
    streams, hdrs, pos = [], [], 0
    for name, wav, kind in [("Kick", kick, 1), ("Bell L", bell, 4), ("Bell R", bell, 2), ("Short", kick[:2000], 1)]:
        b = io.BytesIO()
        sf.write(b, wav, 22050, format="OGG", subtype="VORBIS")
        data = b.getvalue()
        hdrs.append(struct.pack("<20sIIIIIBbHH", name.encode(), pos, pos + len(data), 0, 0, 22050, 60, 0, 0,
                                kind | SF3_VORBIS))
        streams.append(data)
        pos += len(data)
    hdrs.append(struct.pack("<20sIIIIIBbHH", b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    body = (b"sfbk" + chunk(b"LIST", b"INFO" + chunk(b"ifil", struct.pack("<HH", 3, 1)))
            + chunk(b"LIST", b"sdta" + chunk(b"smpl", b"".join(streams)))
            + chunk(b"LIST", b"pdta" + chunk(b"shdr", b"".join(hdrs))))
    (tmp_path / "bank.sf3").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)

    pool, headers = read_soundfont_samples(str(tmp_path / "bank.sf3"))
    assert pool.dtype == np.uint8 and [h[0] for h in headers] == ["Kick", "Bell L", "Bell R", "Short"]
    files = soundfont_samples(str(tmp_path / "bank.sf3"), str(tmp_path / "out"))
    # kept: the mono kick and the left bell; skipped: the right channel and the 0.09 s sample
    assert [os.path.basename(f) for f in files] == ["0000.wav", "0001.wav"]
    wav, sr = sf.read(files[0])
    assert sr == 22050 and len(wav) == len(kick)
    assert np.corrcoef(wav, kick)[0, 1] > 0.99  # lossy codec: the same waveform, not the same bits
    wav, _ = sf.read(files[1])
    assert np.corrcoef(wav, bell)[0, 1] > 0.99


def test_leak_check_finds_a_resampled_copy_and_not_a_different_sound(tmp_path):
    import numpy as np
    import soundfile as sf

    from maeast_fairseq.demo.fetch import nearest_duplicate

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    snare = (rng.standard_normal(16000) * np.exp(-20 * t) + np.sin(2 * np.pi * 190 * t) * np.exp(-30 * t)) * 0.5
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-30 * t)) * t) * np.exp(-8 * t) * 0.8
    sf.write(tmp_path / "snare.wav", snare, 16000)
    sf.write(tmp_path / "kick.wav", kick, 16000)
    t44 = np.arange(44100) / 44100  # the same snare, recorded again at 44.1 kHz (the corpus's copy)
    sf.write(tmp_path / "snare44.flac", np.interp(t44, t, snare), 44100)
    pieces = [str(tmp_path / "kick.wav"), str(tmp_path / "snare44.flac")]
    same = nearest_duplicate([str(tmp_path / "snare.wav")], pieces)
    assert same["max_similarity"] >= 0.99 and same["piece"].endswith("snare44.flac")
    other = nearest_duplicate([str(tmp_path / "snare.wav")], [str(tmp_path / "kick.wav")])
    assert other["max_similarity"] < 0.9
