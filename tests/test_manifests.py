"""Manifest format (maeast_fairseq.data.manifest) and the maeast-manifest tool (manifests.cli)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from maeast_fairseq.data.manifest import (
    ManifestError,
    check_manifest,
    read_label_list,
    read_labels,
    read_manifest,
    write_manifest,
)
from manifests.cli import main, split_valid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_clip(path, sample_rate=16000, seconds=0.2, channels=1, seed=0, fmt=None):
    """Write ``seconds`` of low-level noise; returns the number of frames written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = int(round(sample_rate * seconds))
    data = np.random.default_rng(seed).standard_normal((frames, channels)).astype(np.float32) * 0.1
    sf.write(path, data, sample_rate, format=fmt)
    return frames


@pytest.fixture
def corpus(tmp_path):
    """A small folder of clips at several rates, channel counts and formats, plus non-audio files."""
    root = tmp_path / "audio"
    clips = {
        "dog/a.wav": dict(sample_rate=16000, seconds=0.2),
        "dog/b.flac": dict(sample_rate=22050, seconds=0.25, channels=2),
        "dog/c.WAV": dict(sample_rate=8000, seconds=0.3),
        "cat/d.flac": dict(sample_rate=16000, seconds=0.21),
        "cat/deep/e.ogg": dict(sample_rate=48000, seconds=0.2),
        "cat/f.wav": dict(sample_rate=44100, seconds=0.22, channels=2),
        "bird/g.flac": dict(sample_rate=16000, seconds=0.23),
        "bird/h.wav": dict(sample_rate=32000, seconds=0.2),
    }
    frames = {}
    for i, (rel, kw) in enumerate(sorted(clips.items())):
        frames[rel] = write_clip(str(root / rel), seed=i, **kw)
    (root / "notes.txt").write_text("not audio\n")
    (root / "cat" / "readme.md").write_text("not audio\n")
    return root, frames


def make(root, dest, *extra):
    return main([str(root), "--dest", str(dest), *map(str, extra)])


def rels_of(tsv):
    return [e.rel for e in read_manifest(tsv)[1]]


# ----------------------------------------------------------------------------------------------
# Creating manifests
# ----------------------------------------------------------------------------------------------


def test_round_trip_paths_and_sample_counts(corpus, tmp_path, capsys):
    root, frames = corpus
    dest = tmp_path / "data"
    assert make(root, dest, "--valid-percent", 0) == 0
    assert not (dest / "valid.tsv").exists()  # --valid-percent 0 writes train.tsv only

    first_line = (dest / "train.tsv").read_text().splitlines()[0]
    assert first_line == os.path.realpath(root)
    got_root, entries = read_manifest(dest / "train.tsv")
    assert got_root == os.path.realpath(root)
    assert [e.rel for e in entries] == sorted(frames)  # sorted walk, .WAV accepted, .txt / .md ignored
    for e in entries:
        assert e.num_samples == frames[e.rel] == sf.info(e.path).frames
        assert os.path.isabs(e.path) and os.path.isfile(e.path)
    assert [e.line for e in entries] == list(range(2, len(entries) + 2))
    out = capsys.readouterr().out
    assert "train: 8 clips" in out and "total: 8 clips" in out


def test_valid_split_sizes_and_seed(tmp_path):
    root = tmp_path / "audio"
    for i in range(20):
        write_clip(str(root / f"clip{i:02d}.wav"), seed=i, seconds=0.05)
    dest_a, dest_b, dest_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert make(root, dest_a, "--valid-percent", 0.25, "--seed", 1) == 0
    assert make(root, dest_b, "--valid-percent", 0.25, "--seed", 1) == 0
    assert make(root, dest_c, "--valid-percent", 0.25, "--seed", 2) == 0

    train, valid = rels_of(dest_a / "train.tsv"), rels_of(dest_a / "valid.tsv")
    assert len(valid) == 5 and len(train) == 15
    assert sorted(train + valid) == [f"clip{i:02d}.wav" for i in range(20)]
    assert train == sorted(train) and valid == sorted(valid)  # walk order kept inside each split
    for name in ("train.tsv", "valid.tsv"):  # same seed: identical files
        assert (dest_a / name).read_bytes() == (dest_b / name).read_bytes()
    assert rels_of(dest_c / "valid.tsv") != valid  # another seed: another split


@pytest.mark.parametrize("n, percent, expected", [(100, 0.01, 1), (10, 0.01, 1), (10, 0.5, 5), (1, 0.5, 0),
                                                   (2, 0.9, 1), (5, 0.0, 0)])
def test_split_valid_counts(n, percent, expected):
    assert len(split_valid(n, percent, seed=0)) == expected


def test_ext_filter_and_path_must_contain(corpus, tmp_path):
    root, frames = corpus
    assert make(root, tmp_path / "flac", "--ext", "flac", "--valid-percent", 0) == 0
    assert rels_of(tmp_path / "flac" / "train.tsv") == sorted(r for r in frames if r.endswith(".flac"))
    assert make(root, tmp_path / "wav", "--ext", ".wav", "--valid-percent", 0) == 0  # case-insensitive
    assert rels_of(tmp_path / "wav" / "train.tsv") == sorted(r for r in frames if r.lower().endswith(".wav"))
    assert make(root, tmp_path / "cat", "--path-must-contain", "cat/", "--valid-percent", 0) == 0
    assert rels_of(tmp_path / "cat" / "train.tsv") == sorted(r for r in frames if r.startswith("cat/"))


def test_labels_from_parent_are_aligned(corpus, tmp_path):
    root, frames = corpus
    dest = tmp_path / "data"
    assert make(root, dest, "--valid-percent", 0.25, "--labels-from", "parent") == 0
    assert read_label_list(dest / "labels.txt") == ["bird", "cat", "deep", "dog"]
    for split in ("train", "valid"):
        _, entries = read_manifest(dest / f"{split}.tsv")
        labels = read_labels(dest / f"{split}.lbl", len(entries))
        assert labels == [[os.path.basename(os.path.dirname(e.rel))] for e in entries]
    assert main(["--check", str(dest), "--labels"]) == 0


def test_labels_from_regex_and_csv(corpus, tmp_path):
    root, frames = corpus
    dest = tmp_path / "regex"
    assert make(root, dest, "--valid-percent", 0, "--labels-from", r"regex:^(?P<label>[a-z]+)/") == 0
    _, entries = read_manifest(dest / "train.tsv")
    assert read_labels(dest / "train.lbl", len(entries)) == [[e.rel.split("/")[0]] for e in entries]

    table = tmp_path / "meta.csv"
    table.write_text('filename,category\na.wav,"dog,bark"\ncat/d.flac,cat\ne.ogg,cat\nmissing.wav,x\n')
    dest = tmp_path / "csv"
    assert make(root, dest, "--valid-percent", 0, "--labels-from", f"csv:{table}",
                "--csv-columns", "filename,category") == 0
    _, entries = read_manifest(dest / "train.tsv")
    assert [e.rel for e in entries] == ["cat/d.flac", "cat/deep/e.ogg", "dog/a.wav"]  # unlabelled files skipped
    assert read_labels(dest / "train.lbl", 3) == [["cat"], ["cat"], ["dog", "bark"]]
    assert read_label_list(dest / "labels.txt") == ["bark", "cat", "dog"]


def test_unreadable_and_short_files_are_reported(corpus, tmp_path, capsys):
    root, frames = corpus
    (root / "dog" / "broken.wav").write_bytes(b"\x00garbage" * 50)
    dest = tmp_path / "data"
    assert make(root, dest, "--valid-percent", 0, "--min-samples", 4000) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file(s): unreadable by soundfile" in err and "dog/broken.wav" in err
    short = sorted(r for r, n in frames.items() if n < 4000)
    assert short and f"skipped {len(short)} file(s): shorter than --min-samples 4000" in err
    assert rels_of(dest / "train.tsv") == sorted(r for r, n in frames.items() if n >= 4000)


def test_no_audio_found_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert make(tmp_path / "empty", tmp_path / "data") == 1
    assert "no audio files found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, line, fragment", [
    ("", None, "empty"),
    ("a.wav\t100\n", 1, "looks like a clip line"),
    ("relative/root\na.wav\t100\n", 1, "not an absolute path"),
    ("/data\na.wav\t100\nb.wav 100\n", 3, "line 3: expected 'path<TAB>num_samples', found no tab"),
    ("/data\na.wav\t100\t5\n", 2, "found 3 tab-separated fields"),
    ("/data\na.wav\tmany\n", 2, "'many' is not an integer"),
    ("/data\na.wav\t-4\n", 2, "is negative"),
    ("/data\na.wav\t4\n\nb.wav\t5\n", 3, "blank line"),
])
def test_read_manifest_errors(tmp_path, text, line, fragment):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(tsv)
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(tsv) in str(info.value)


def test_read_manifest_accepts_absolute_paths_and_crlf(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(b"/\r\n/x/a.wav\t10\r\nb c.wav\t0\r\n")
    root, entries = read_manifest(tsv)
    assert root == "/"
    assert [(e.path, e.num_samples, e.line) for e in entries] == [("/x/a.wav", 10, 2), ("/b c.wav", 0, 3)]


def test_read_labels_errors(tmp_path):
    (tmp_path / "train.lbl").write_text("dog\ncat,bark\n")
    with pytest.raises(ManifestError) as info:
        read_labels(tmp_path / "train.lbl", 3)
    assert "train.lbl" in str(info.value) and "train.tsv has 3 clips" in str(info.value)
    (tmp_path / "valid.lbl").write_text("dog\ncat,,bark\n")
    with pytest.raises(ManifestError, match="line 2: empty label"):
        read_labels(tmp_path / "valid.lbl", 2)
    assert read_labels(tmp_path / "train.lbl", 2) == [["dog"], ["cat", "bark"]]
    (tmp_path / "labels.txt").write_text("dog\ncat\ndog\n")
    with pytest.raises(ManifestError, match="line 3: label 'dog' already appears on line 1"):
        read_label_list(tmp_path / "labels.txt")


def test_write_manifest_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        write_manifest(tmp_path / "x.tsv", "rel", [])
    with pytest.raises(ValueError, match="tab"):
        write_manifest(tmp_path / "x.tsv", "/r", [("a\tb.wav", 3)])
    assert not (tmp_path / "x.tsv").exists()


# ----------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_manifest(tmp_path):
    """A manifest with one problem of each kind on known lines (3, 4, 5, 6); lines 2 and 7 are fine."""
    root = tmp_path / "audio"
    n_good = write_clip(str(root / "good.wav"))
    n_other = write_clip(str(root / "other.flac"), sample_rate=22050, channels=2)
    (root / "garbage.wav").write_bytes(b"this is not audio" * 20)
    tsv = tmp_path / "data" / "train.tsv"
    tsv.parent.mkdir()
    tsv.write_text(
        f"{root}\n"
        f"good.wav\t{n_good}\n"          # 2 ok
        f"no_tab.wav {n_good}\n"         # 3 no tab
        f"missing.wav\t{n_good}\n"       # 4 missing file
        f"garbage.wav\t100\n"            # 5 unreadable
        f"other.flac\t{n_other + 7}\n"   # 6 wrong sample count
        f"other.flac\t{n_other}\n"       # 7 ok except: duplicate of line 6
    )
    return tsv, n_other


def test_check_reports_every_problem_with_line_numbers(bad_manifest, capsys):
    tsv, n_other = bad_manifest
    assert main(["--check", str(tsv)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5, out
    assert out[0].startswith(f"{tsv}:3: format: expected 'path<TAB>num_samples', found no tab")
    assert out[1].startswith(f"{tsv}:4: missing: audio file ") and "missing.wav" in out[1]
    assert out[2].startswith(f"{tsv}:5: unreadable: soundfile cannot read ") and "garbage.wav" in out[2]
    assert out[3].startswith(f"{tsv}:6: num-samples: manifest says {n_other + 7} samples, file has {n_other}")
    assert out[4].startswith(f"{tsv}:7: duplicate: other.flac is already listed on line 6")

    problems = check_manifest(tsv)
    assert [(p.line, p.kind) for p in problems] == [(3, "format"), (4, "missing"), (5, "unreadable"),
                                                    (6, "num-samples"), (7, "duplicate")]
    assert [p.kind for p in check_manifest(tsv, check_audio=False)] == ["format", "duplicate"]


def test_check_good_manifest_passes(corpus, tmp_path, capsys):
    root, frames = corpus
    dest = tmp_path / "data"
    assert make(root, dest, "--valid-percent", 0.25) == 0
    capsys.readouterr()
    assert main(["--check", str(dest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"OK: 2 manifest(s), {len(frames)} clips (audio files opened)"]
    assert main(["--check", str(dest / "valid.tsv")]) == 0


def test_check_folder_checks_every_tsv(corpus, bad_manifest, tmp_path, capsys):
    tsv, _ = bad_manifest
    root, _ = corpus
    assert make(root, tsv.parent / "other", "--valid-percent", 0) == 0
    os.replace(tsv.parent / "other" / "train.tsv", tsv.parent / "extra.tsv")  # a good manifest beside the bad one
    capsys.readouterr()
    assert main(["--check", str(tsv.parent)]) == 1
    out = capsys.readouterr().out
    assert f"{tsv}:3:" in out and "extra.tsv" not in out


def test_check_label_problems(corpus, tmp_path, capsys):
    root, _ = corpus
    dest = tmp_path / "data"
    assert make(root, dest, "--valid-percent", 0, "--labels-from", "parent") == 0
    lines = (dest / "train.lbl").read_text().splitlines()
    lines[1] = "dog,unicorn"
    (dest / "train.lbl").write_text("\n".join(lines[:-1]) + "\n")  # one line short, one unknown label
    capsys.readouterr()
    assert main(["--check", str(dest / "train.tsv")]) == 1  # the .lbl file exists, so it is checked
    out = capsys.readouterr().out.splitlines()
    lbl = dest / "train.lbl"
    assert out[0].startswith(f"{lbl}: labels: has 7 label lines but {dest / 'train.tsv'} has 8 clip lines")
    assert out[1].startswith(f"{lbl}:2: unknown-label: label(s) 'unicorn' not in ")
    os.remove(lbl)
    assert main(["--check", str(dest / "train.tsv")]) == 0
    assert main(["--check", str(dest / "train.tsv"), "--labels"]) == 1
    assert "label file missing" in capsys.readouterr().out


@pytest.mark.slow
def test_module_entry_point(bad_manifest):
    tsv, _ = bad_manifest
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "manifests", "--check", str(tsv)], capture_output=True,
                          text=True, env=env, cwd=str(tsv.parent), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"{tsv}:3: format:" in proc.stdout and f"{tsv}:6: num-samples:" in proc.stdout
    assert "5 problem(s) in 1 manifest(s)" in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# Splits: test split, group-aware, stratified, k-fold
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def kits(tmp_path):
    """8 drum kits x 3 instruments, 1 to 3 hits of each per kit (uneven group sizes)."""
    root = tmp_path / "kits"
    rng = np.random.default_rng(0)
    for k in range(8):
        for label in ("kick", "snare", "hat"):
            for j in range(int(rng.integers(1, 4))):
                write_clip(str(root / f"kit{k}" / f"{label}_{j}.wav"), seconds=0.05, seed=k * 10 + j)
    return root


LABEL_RE = r"regex:/(?P<label>[a-z]+)_\d+\.wav$"
KIT_RE = r"regex:^(kit\d+)/"


def kit_of(rel):
    return rel.split("/")[0]


def split_rels(dest, names):
    return {name: rels_of(dest / f"{name}.tsv") for name in names}


def test_group_split_keeps_groups_whole_with_test_split(kits, tmp_path):
    dest = tmp_path / "data"
    assert make(kits, dest, "--labels-from", LABEL_RE, "--group-by", KIT_RE, "--valid-percent", 0.15,
                "--test-percent", 0.25, "--seed", 3) == 0
    splits = split_rels(dest, ("train", "valid", "test"))
    everything = [rel for rels in splits.values() for rel in rels]
    assert sorted(everything) == sorted(p.relative_to(kits).as_posix() for p in kits.rglob("*.wav"))
    kits_of = {name: {kit_of(rel) for rel in rels} for name, rels in splits.items()}
    assert all(kits_of[name] for name in splits)  # no split empty
    for a in splits:
        for b in splits:
            if a != b:
                assert not kits_of[a] & kits_of[b], f"kit(s) {kits_of[a] & kits_of[b]} in both {a} and {b}"
    # every kit holds every instrument, so stratification puts every label in every split
    for name in splits:
        labels = {lbl for line in (dest / f"{name}.lbl").read_text().splitlines() for lbl in line.split(",")}
        assert labels == {"kick", "snare", "hat"}
    # the .lbl lines stay aligned with the .tsv lines
    for name, rels in splits.items():
        lbl = (dest / f"{name}.lbl").read_text().splitlines()
        assert [rel.split("/")[1].split("_")[0] for rel in rels] == lbl


def test_kfold_every_group_in_exactly_one_fold(kits, tmp_path):
    dest = tmp_path / "folds"
    assert make(kits, dest, "--labels-from", LABEL_RE, "--group-by", KIT_RE, "--folds", 5) == 0
    folds = split_rels(dest, [f"fold{k}" for k in range(1, 6)])
    assert not (dest / "train.tsv").exists()
    all_rels = [rel for rels in folds.values() for rel in rels]
    assert len(all_rels) == len(set(all_rels)) == len(list(kits.rglob("*.wav")))  # every clip in exactly one fold
    fold_of_kit = {}
    for name, rels in folds.items():
        assert rels, f"{name} is empty"
        for rel in rels:
            assert fold_of_kit.setdefault(kit_of(rel), name) == name, f"{kit_of(rel)} straddles folds"
    assert len(fold_of_kit) == 8


def test_group_by_parent_and_csv_column(kits, tmp_path):
    dest = tmp_path / "parent"
    assert make(kits, dest, "--labels-from", LABEL_RE, "--group-by", "parent", "--folds", 3) == 0
    folds = split_rels(dest, ("fold1", "fold2", "fold3"))
    seen = {}
    for name, rels in folds.items():
        for rel in rels:
            assert seen.setdefault(kit_of(rel), name) == name
    # csv:COLUMN groups by a column of the --labels-from table: here two kits share one "session"
    table = tmp_path / "meta.csv"
    rows = ["path,labels,session"] + [
        f"{p.relative_to(kits).as_posix()},{p.name.split('_')[0]},s{int(p.parent.name[3:]) // 2}"
        for p in sorted(kits.rglob("*.wav"))]
    table.write_text("\n".join(rows) + "\n")
    dest = tmp_path / "csv"
    assert make(kits, dest, "--labels-from", f"csv:{table}", "--group-by", "csv:session", "--folds", 4) == 0
    folds = split_rels(dest, ("fold1", "fold2", "fold3", "fold4"))
    session_of_fold = {name: {int(kit_of(rel)[3:]) // 2 for rel in rels} for name, rels in folds.items()}
    assert all(len(s) == 1 for s in session_of_fold.values())  # 4 sessions, 4 folds, one each


def test_group_split_errors(kits, tmp_path, capsys):
    with pytest.raises(SystemExit):  # csv:COLUMN needs a --labels-from csv table
        make(kits, tmp_path / "a", "--group-by", "csv:session")
    assert "--labels-from csv:FILE" in capsys.readouterr().err
    # 8 kits cannot make 9 folds of whole kits
    assert make(kits, tmp_path / "b", "--group-by", KIT_RE, "--folds", 9) == 1
    assert "only 8 group(s) for 9 splits" in capsys.readouterr().err


def test_stratified_split_by_clip_hits_exact_sizes():
    from maeast_fairseq.data.manifest import assign_splits, split_sizes

    labels = [["a"]] * 60 + [["b"]] * 30 + [["c"]] * 10
    sizes = split_sizes(100, [0.1, 0.2])
    assert sizes == [10, 20]
    which = assign_splits([str(i) for i in range(100)], labels, [70, 10, 20], seed=0)
    counts = {s: Counter(labels[i][0] for i in range(100) if which[i] == s) for s in range(3)}
    assert [sum(c.values()) for c in counts.values()] == [70, 10, 20]
    assert counts[1] == {"a": 6, "b": 3, "c": 1} and counts[2] == {"a": 12, "b": 6, "c": 2}
    assert assign_splits([str(i) for i in range(100)], labels, [70, 10, 20], seed=0) == which  # deterministic
    assert assign_splits([str(i) for i in range(100)], labels, [70, 10, 20], seed=1) != which
