"""``maeast-manifest``: create and check wav2vec-style manifests.

Create (same interface as fairseq's ``examples/wav2vec/wav2vec_manifest.py``, plus labels)::

    maeast-manifest ROOT --dest DIR [--ext wav,flac,ogg,mp3] [--valid-percent 0.01] [--test-percent 0]
                    [--folds K] [--seed 42] [--path-must-contain FRAG] [--min-samples N]
                    [--labels-from parent|regex:PATTERN|csv:FILE [--csv-columns PATH,LABELS]]
                    [--group-by parent|regex:PATTERN|csv:COLUMN]
                    [--workers 8] [--progress-every 1000]

walks ROOT in sorted (deterministic) order, reads each file's frame count with ``soundfile.info``
and writes ``DIR/train.tsv`` and ``DIR/valid.tsv`` (format: :mod:`maeast_fairseq.data.manifest`).
Clips keep the walk order inside each split; the valid clips are a seeded random choice of
``round(n * valid_percent)`` clips (at least 1 when ``valid_percent > 0`` and there are 2+ clips,
never all of them).  ``--valid-percent 0`` writes only ``train.tsv`` (no ``valid.tsv``; a stale one
left in DIR is reported).  With ``--labels-from`` it also writes the aligned ``train.lbl`` /
``valid.lbl`` and ``labels.txt`` (sorted label list), and the split is stratified by label (each split gets its share
of every label as nearly as the clips allow).

``--test-percent F`` adds ``test.tsv``; ``--folds K`` writes ``fold1.tsv`` .. ``foldK.tsv`` instead (each clip in
exactly one fold, for ``maeast-evaluate --folds K``). ``--group-by`` keeps every group whole: all clips of a speaker,
a drum kit or a recording session land in one split (or fold), so no test score is inflated by near-copies seen in
training. Groups come from ``parent`` (the file's folder path), ``regex:PATTERN`` (the group named ``group``, else
group 1, else the whole match, on the path relative to ROOT) or ``csv:COLUMN`` (a column of the ``--labels-from
csv:FILE`` table). Split sizes then follow whole groups (close to the fractions, not exact); a label held by too few
groups to reach every split is reported.

* ``parent``: the name of the folder that contains the file (``dog/001.wav`` -> ``dog``);
* ``regex:PATTERN``: ``re.search`` on the path relative to ROOT (``/`` separators); the label is
  the group named ``label``, else group 1, else the whole match; commas separate several labels;
* ``csv:FILE``: a CSV file with a header row; the columns named by ``--csv-columns`` (default
  ``path,labels``) give a path relative to ROOT (or a bare file name, matched against the file
  name when it is unique) and the labels, comma-separated (quote the field: ``a.wav,"dog,bark"``).

Files soundfile cannot read, truncated WAV files (the header declares more audio than the file
holds: an interrupted copy), empty files (0 samples), files shorter than ``--min-samples`` and files
without a label are skipped, and each group is reported (count and the first few paths) on stderr.

Check::

    maeast-manifest --check DIR_OR_TSV [--labels] [--no-audio] [--sample-rate HZ]

checks every ``*.tsv`` in DIR (or the one file) and prints each problem as
``file:line: kind: message``.  Exit code 1 when there is any problem, else 0 with a one-line summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import soundfile as sf

from maeast_fairseq.data.manifest import (
    LABEL_LIST_NAME,
    AudioProbe,
    ManifestError,
    assign_splits,
    check_manifest,
    describe_audio_error,
    label_path_for,
    map_in_threads,
    parse_label_line,
    probe_audio,
    read_manifest,
    split_sizes,
    write_label_list,
    write_labels,
    write_manifest,
)

PROG = "maeast-manifest"
DEFAULT_EXTS = "wav,flac,ogg,mp3"
#: How many paths to show for each group of skipped files.
SHOW_FIRST = 5


def log(message: str) -> None:
    """Progress and warnings go to stderr; the summary goes to stdout."""
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------


def parse_exts(text: str) -> set[str]:
    """``"wav,.FLAC"`` -> ``{"wav", "flac"}``."""
    exts = {ext.strip().lower().lstrip(".") for ext in text.split(",")}
    exts.discard("")
    if not exts:
        raise ValueError(f"no extension in {text!r}")
    return exts


def find_audio(root: str, exts: set[str], must_contain: str | None = None) -> list[str]:
    """Relative paths (``/`` separators) of the files under ``root`` with one of ``exts``, sorted.

    Symlinked folders are followed (each real folder once); ``must_contain`` keeps only the paths,
    relative to ``root``, that contain that text.
    """
    found: list[str] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower().lstrip(".") not in exts:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if must_contain is not None and must_contain not in rel:
                continue
            found.append(rel)
    found.sort()
    return found


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------

#: A label source maps a path relative to ROOT to its labels, or None when it has none.
#: It raises ValueError for a malformed label text.
LabelSource = Callable[[str], "list[str] | None"]


def parent_labels(rel: str) -> list[str] | None:
    """``dog/001.wav`` -> ``["dog"]``; files directly in ROOT have no label."""
    parent = os.path.basename(os.path.dirname(rel))
    if not parent:
        return None
    if "," in parent:
        raise ValueError(f"folder name {parent!r} contains a comma, which separates labels")
    return [parent]


def regex_part(pattern: str, group_name: str, option: str) -> Callable[[str], str | None]:
    """The part of a relative path that ``regex:PATTERN`` of ``option`` picks: the group named ``group_name``, else
    group 1, else the whole match; None when the pattern does not match or picks nothing. A malformed pattern raises
    ValueError naming the option."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regular expression in {option} {'regex:' + pattern!r}: {exc}") from None
    which: int | str = group_name if group_name in compiled.groupindex else (1 if compiled.groups >= 1 else 0)

    def part(rel: str) -> str | None:
        match = compiled.search(rel)
        return (match.group(which) or None) if match is not None else None

    return part


def regex_labels(pattern: str) -> LabelSource:
    """Label source for ``--labels-from regex:PATTERN`` (group ``label``, else group 1, else the whole match)."""
    part = regex_part(pattern, "label", "--labels-from")

    def source(rel: str) -> list[str] | None:
        text = part(rel)
        return None if text is None else parse_label_line(text)

    return source


class CsvLabels:
    """Label source for ``csv:FILE``: keys are paths relative to ROOT or bare file names."""

    def __init__(self, csv_path: str, path_column: str, label_column: str):
        self.csv_path = csv_path
        self.by_key: dict[str, str] = {}
        self.row_of: dict[str, int] = {}
        self.used: dict[str, list[str]] = {}
        self.rows: dict[str, dict[str, str]] = {}
        try:
            f = open(csv_path, newline="", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--labels-from csv: cannot read {csv_path}: {exc.strerror}") from None
        with f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for column in (path_column, label_column):
                if column not in columns:
                    raise ValueError(f"{csv_path}: no column {column!r} in the header {columns}; "
                                     "name the columns with --csv-columns PATH_COLUMN,LABEL_COLUMN")
            for row in reader:
                line = reader.line_num
                key = (row[path_column] or "").strip().replace("\\", "/")
                if not key:
                    raise ValueError(f"{csv_path}: line {line}: empty {path_column!r} field")
                if key in self.by_key:
                    raise ValueError(f"{csv_path}: line {line}: {key!r} already appears on line "
                                     f"{self.row_of[key]}; list each file once")
                self.by_key[key] = row[label_column] or ""
                self.row_of[key] = line
                self.rows[key] = row

    def key_of(self, rel: str) -> str | None:
        """The CSV key of a file: its path relative to ROOT, else its bare file name; None when neither is listed."""
        if rel in self.by_key:
            return rel
        key = os.path.basename(rel)
        return key if key in self.by_key else None

    def __call__(self, rel: str) -> list[str] | None:
        key = self.key_of(rel)
        if key is None:
            return None
        self.used.setdefault(key, []).append(rel)
        return parse_label_line(self.by_key[key])

    def column(self, name: str) -> Callable[[str], str | None]:
        """Group source ``csv:COLUMN``: the value of column ``name`` on the file's row (None when empty)."""
        columns = next(iter(self.rows.values()), {}).keys()
        if self.rows and name not in columns:
            raise ValueError(f"--group-by csv:{name}: no column {name!r} in {self.csv_path} (columns: "
                             f"{', '.join(columns)})")

        def source(rel: str) -> str | None:
            key = self.key_of(rel)
            value = (self.rows[key].get(name) or "").strip() if key is not None else ""
            return value or None

        return source

    def ambiguous(self) -> list[tuple[str, list[str]]]:
        """CSV keys that matched more than one file (bare file names present in several folders)."""
        return [(key, rels) for key, rels in self.used.items() if len(rels) > 1]

    def unused(self) -> list[str]:
        """CSV keys that matched no file."""
        return [key for key in self.by_key if key not in self.used]


def make_label_source(spec: str, csv_columns: str) -> LabelSource:
    """Build the label source for a ``--labels-from`` value; raises ValueError when it is malformed."""
    if spec == "parent":
        return parent_labels
    if spec.startswith("regex:"):
        return regex_labels(spec[len("regex:"):])
    if spec.startswith("csv:"):
        columns = [c.strip() for c in csv_columns.split(",")]
        if len(columns) != 2 or not all(columns):
            raise ValueError(f"--csv-columns needs two column names, PATH,LABELS; got {csv_columns!r}")
        return CsvLabels(spec[len("csv:"):], columns[0], columns[1])
    raise ValueError(f"--labels-from must be 'parent', 'regex:PATTERN' or 'csv:FILE', got {spec!r}")


#: A group source maps a path relative to ROOT to its group (speaker, kit, session), or None when it has none.
GroupSource = Callable[[str], "str | None"]


def parent_group(rel: str) -> str | None:
    """``kit3/snare/001.wav`` -> ``kit3/snare`` (the whole folder path); files directly in ROOT have no group."""
    return os.path.dirname(rel) or None


def regex_group(pattern: str) -> GroupSource:
    """Group source for ``--group-by regex:PATTERN`` (group ``group``, else group 1, else the whole match)."""
    return regex_part(pattern, "group", "--group-by")


def make_group_source(spec: str, label_source: LabelSource | None) -> GroupSource:
    """Build the group source for a ``--group-by`` value; raises ValueError when it is malformed."""
    if spec == "parent":
        return parent_group
    if spec.startswith("regex:"):
        return regex_group(spec[len("regex:"):])
    if spec.startswith("csv:"):
        if not isinstance(label_source, CsvLabels):
            raise ValueError(f"--group-by {spec} reads a column of the --labels-from csv:FILE table; give "
                             "--labels-from csv:FILE too (or group with parent / regex:PATTERN)")
        return label_source.column(spec[len("csv:"):])
    raise ValueError(f"--group-by must be 'parent', 'regex:PATTERN' or 'csv:COLUMN', got {spec!r}")


# ----------------------------------------------------------------------------------------------
# Creating manifests
# ----------------------------------------------------------------------------------------------


@dataclass
class Clip:
    rel: str
    probe: AudioProbe
    labels: list[str] | None = None
    group: str | None = None  #: from --group-by; clips of one group never straddle splits


@dataclass
class Skipped:
    """Files left out of the manifests, by reason: ``{reason: [(rel, detail), ...]}``."""

    groups: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, reason: str, rel: str, detail: str = "") -> None:
        self.groups.setdefault(reason, []).append((rel, detail))

    def report(self) -> None:
        for reason, items in self.groups.items():
            log(f"skipped {len(items)} file(s): {reason}" + (f"; first {SHOW_FIRST}:" if len(items) > SHOW_FIRST
                                                               else ":"))
            for rel, detail in items[:SHOW_FIRST]:
                log(f"  {rel}" + (f": {detail}" if detail else ""))

    def total(self) -> int:
        return sum(len(items) for items in self.groups.values())


def apply_source(source: Callable, rels: list[str], skipped: Skipped, missing_reason: str) -> dict:
    """``{rel: source(rel)}`` for the paths (in order) that ``source`` (a label or group source) gives a value for;
    the others go to ``skipped``: under ``missing_reason`` when it gives None, as a malformed label when it raises
    ValueError (a label source's malformed label text)."""
    found = {}
    for rel in rels:
        try:
            value = source(rel)
        except ValueError as exc:
            skipped.add("malformed label", rel, str(exc))
            continue
        if value is None:
            skipped.add(missing_reason, rel)
            continue
        found[rel] = value
    return found


def split_valid(n: int, valid_percent: float, seed: int) -> set[int]:
    """Indices of the valid clips: a seeded random choice of ``round(n * valid_percent)`` clips.

    At least one when ``valid_percent > 0`` and ``n >= 2``; never all ``n`` clips.
    """
    if valid_percent <= 0 or n == 0:
        return set()
    n_valid = round(n * valid_percent)
    n_valid = max(n_valid, 1 if n >= 2 else 0)
    n_valid = min(n_valid, n - 1)
    return set(random.Random(seed).sample(range(n), n_valid))


def make_splits(clips: list[Clip], args: argparse.Namespace) -> dict[str, list[Clip]]:
    """The clips of each split, in walk order: ``train`` / ``valid`` / ``test`` (the held-out ones only when their
    fraction is > 0), or ``fold1`` .. ``foldK`` with ``--folds K``.

    Every split except the legacy one (no labels, no ``--group-by``, no test split, no folds: a seeded random choice of
    valid clips, :func:`split_valid`) comes from :func:`~maeast_fairseq.data.manifest.assign_splits`: whole groups
    (``--group-by``; else each clip is its own group), stratified by label where the groups allow it."""
    n = len(clips)
    labelled = any(clip.labels is not None for clip in clips)
    if args.folds is not None:
        names = [f"fold{k + 1}" for k in range(args.folds)]
        targets = [n // args.folds + (1 if k < n % args.folds else 0) for k in range(args.folds)]
    elif not labelled and args.group_by is None and args.test_percent == 0:
        valid_idx = split_valid(n, args.valid_percent, args.seed)
        splits = {"train": [clip for i, clip in enumerate(clips) if i not in valid_idx]}
        if args.valid_percent > 0:
            splits["valid"] = [clip for i, clip in enumerate(clips) if i in valid_idx]
        return splits
    else:
        names = ["train", "valid", "test"]
        held_out = split_sizes(n, [args.valid_percent, args.test_percent])
        targets = [n - sum(held_out), *held_out]
    groups = [clip.group if clip.group is not None else f"\0clip{i}" for i, clip in enumerate(clips)]
    labels = [clip.labels or [] for clip in clips] if labelled else None
    which = assign_splits(groups, labels, targets, args.seed)
    splits = {name: [clip for clip, s in zip(clips, which) if s == k] for k, name in enumerate(names)}
    if args.folds is None:
        splits = {name: split_clips for name, split_clips in splits.items()
                  if name == "train" or {"valid": args.valid_percent, "test": args.test_percent}[name] > 0}
    if args.group_by is not None and labelled:
        split_of_label: dict[str, set[str]] = {}
        for name, split_clips in splits.items():
            for clip in split_clips:
                for label in clip.labels or []:
                    split_of_label.setdefault(label, set()).add(name)
        missing = {name: sorted(label for label, names_ in split_of_label.items() if name not in names_)
                   for name in splits}
        for name, labels_missing in missing.items():
            if labels_missing:
                log(f"note: {name} has no clip of {len(labels_missing)} label(s) ({', '.join(labels_missing[:SHOW_FIRST])}"
                    f"{', ...' if len(labels_missing) > SHOW_FIRST else ''}): those labels live in too few groups "
                    "to appear in every split")
    return splits


def hours(clips: Sequence[Clip]) -> float:
    return sum(clip.probe.num_samples / clip.probe.sample_rate for clip in clips) / 3600


def probe_all(root: str, rels: Sequence[str], workers: int, progress_every: int,
              skipped: Skipped) -> list[tuple[str, AudioProbe]]:
    """soundfile.info for each file (threaded); unreadable files go to ``skipped``."""

    def probe(rel: str) -> AudioProbe | str:
        try:
            return probe_audio(os.path.join(root, rel))
        except (sf.SoundFileError, OSError) as exc:
            return describe_audio_error(exc)

    start = time.monotonic()
    probed: list[tuple[str, AudioProbe]] = []
    for done, (rel, result) in enumerate(zip(rels, map_in_threads(probe, rels, workers)), start=1):
        if isinstance(result, AudioProbe):
            probed.append((rel, result))
        else:
            skipped.add("unreadable by soundfile", rel, result)
        if progress_every > 0 and (done % progress_every == 0 or done == len(rels)) and len(rels) >= progress_every:
            elapsed = time.monotonic() - start
            log(f"read {done}/{len(rels)} file headers ({elapsed:.1f} s, {done / max(elapsed, 1e-9):.0f} files/s)")
    return probed


def create(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not os.path.isdir(args.root):
        parser.error(f"ROOT {args.root!r} is not a folder")
    if not 0 <= args.valid_percent < 1:
        parser.error("--valid-percent must be in [0, 1) (a fraction: 0.01 = 1 %)")
    if not 0 <= args.test_percent < 1:
        parser.error("--test-percent must be in [0, 1) (a fraction: 0.1 = 10 %)")
    if args.valid_percent + args.test_percent >= 1:
        parser.error("--valid-percent + --test-percent must be < 1: leave clips for training")
    if args.folds is not None:
        if args.folds < 2:
            parser.error("--folds K needs K >= 2 (maeast-evaluate --folds needs K >= 3)")
        if args.test_percent > 0:
            parser.error("--folds writes fold1..foldK manifests (each fold is a test fold once): drop --test-percent")
    try:
        exts = parse_exts(args.ext)
        label_source = make_label_source(args.labels_from, args.csv_columns) if args.labels_from else None
        group_source = make_group_source(args.group_by, label_source) if args.group_by else None
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    root = os.path.realpath(args.root)

    rels = find_audio(root, exts, args.path_must_contain)
    log(f"found {len(rels)} file(s) with extension {','.join(sorted(exts))} under {root}"
        + (f" containing {args.path_must_contain!r}" if args.path_must_contain else ""))
    if not rels:
        print(f"{PROG}: error: no audio files found under {root}; check ROOT, --ext and --path-must-contain",
              file=sys.stderr)
        return 1

    skipped = Skipped()
    labels_of: dict[str, list[str]] = {}
    if label_source is not None:
        labels_of = apply_source(label_source, rels, skipped, f"no label from --labels-from {args.labels_from}")
        rels = list(labels_of)
    groups_of: dict[str, str] = {}
    if group_source is not None:
        groups_of = apply_source(group_source, rels, skipped, f"no group from --group-by {args.group_by}")
        rels = list(groups_of)
        if isinstance(label_source, CsvLabels):
            ambiguous = label_source.ambiguous()
            if ambiguous:
                for key, matched in ambiguous[:SHOW_FIRST]:
                    print(f"{PROG}: error: {label_source.csv_path}: {key!r} matches several files: "
                          f"{', '.join(matched[:SHOW_FIRST])}", file=sys.stderr)
                print(f"{PROG}: error: {len(ambiguous)} ambiguous CSV row(s); write paths relative to ROOT in "
                      "the CSV", file=sys.stderr)
                return 1
            unused = label_source.unused()
            if unused:
                log(f"{len(unused)} CSV row(s) match no audio file (first {SHOW_FIRST}: "
                    f"{', '.join(unused[:SHOW_FIRST])})")

    clips = []
    for rel, probe in probe_all(root, rels, args.workers, args.progress_every, skipped):
        if probe.truncated is not None:
            skipped.add("truncated (the header declares more audio than the file holds; re-copy them)", rel,
                        f"{probe.truncated[0]} frames declared, {probe.truncated[1]} present")
            continue
        if probe.num_samples == 0:
            skipped.add("empty (0 samples)", rel)
            continue
        if probe.num_samples < args.min_samples:
            skipped.add(f"shorter than --min-samples {args.min_samples}", rel, f"{probe.num_samples} samples")
            continue
        clips.append(Clip(rel, probe, labels_of.get(rel), groups_of.get(rel)))
    skipped.report()
    if not clips:
        print(f"{PROG}: error: no usable audio file left ({skipped.total()} skipped)", file=sys.stderr)
        return 1

    try:
        splits = make_splits(clips, args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.folds is None:
        for split, fraction in (("valid", args.valid_percent), ("test", args.test_percent)):
            for stale in (f"{split}.tsv", f"{split}.lbl"):
                if fraction == 0 and os.path.exists(os.path.join(args.dest, stale)):
                    log(f"warning: this run writes no {split} split, but {os.path.join(args.dest, stale)} exists "
                        "from an earlier run; delete it if it is stale")

    os.makedirs(args.dest, exist_ok=True)
    print(f"root: {root}")
    for split, split_clips in splits.items():
        tsv = os.path.join(args.dest, f"{split}.tsv")
        write_manifest(tsv, root, [(clip.rel, clip.probe.num_samples) for clip in split_clips])
        if label_source is not None:
            write_labels(label_path_for(tsv), [clip.labels or [] for clip in split_clips])
        n_groups = f", {len({clip.group for clip in split_clips})} groups" if args.group_by else ""
        print(f"{split}: {len(split_clips)} clips{n_groups}, {hours(split_clips):.2f} h -> {tsv}")
    if label_source is not None:
        label_list = sorted({label for clip in clips for label in clip.labels or []})
        label_list_path = os.path.join(args.dest, LABEL_LIST_NAME)
        write_label_list(label_list_path, label_list)
        print(f"labels: {len(label_list)} -> {label_list_path}")
    rates = Counter(clip.probe.sample_rate for clip in clips)
    print("sample rates: " + ", ".join(f"{rate} Hz x{count}" for rate, count in sorted(rates.items())))
    print(f"total: {len(clips)} clips, {hours(clips):.2f} h; skipped {skipped.total()} file(s)")
    return 0


# ----------------------------------------------------------------------------------------------
# Checking manifests
# ----------------------------------------------------------------------------------------------


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    target = args.check
    if os.path.isdir(target):
        tsvs = sorted(os.path.join(target, name) for name in os.listdir(target) if name.endswith(".tsv"))
        if not tsvs:
            print(f"{PROG}: error: no .tsv manifest in {target}", file=sys.stderr)
            return 1
    elif os.path.isfile(target):
        tsvs = [target]
    else:
        parser.error(f"--check {target!r}: no such file or folder")

    n_problems = 0
    n_clips = 0
    for tsv in tsvs:
        def progress(done: int, total: int, tsv: str = tsv) -> None:
            if args.progress_every > 0 and done % args.progress_every == 0:
                log(f"{tsv}: checked {done}/{total} audio files")

        problems = check_manifest(tsv, sample_rate=args.sample_rate, check_audio=not args.no_audio,
                                  labels=True if args.labels else None, workers=args.workers, progress=progress)
        for problem in problems:
            print(problem)
        n_problems += len(problems)
        if not problems:
            n_clips += len(read_manifest(tsv)[1])
    if n_problems:
        print(f"{PROG}: {n_problems} problem(s) in {len(tsvs)} manifest(s)", file=sys.stderr)
        return 1
    what = "format only" if args.no_audio else "audio files opened"
    print(f"OK: {len(tsvs)} manifest(s), {n_clips} clips ({what}"
          + (", labels checked" if args.labels else "") + ")")
    return 0


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


EPILOG = """examples:
  maeast-manifest /data/LibriSpeech --dest data/ls --ext flac --valid-percent 0.01
  maeast-manifest /data/ESC-50/audio --dest data/esc50 --valid-percent 0.2 \\
      --labels-from csv:/data/ESC-50/meta/esc50.csv --csv-columns filename,category
  maeast-manifest /data/speech_commands --dest data/spc --labels-from parent
  maeast-manifest /data/kits --dest data/kits --labels-from regex:'/(?P<label>[a-z]+)_[0-9]+[.]wav$' \
      --group-by regex:'^(kit[0-9]+)/' --valid-percent 0.1 --test-percent 0.2     # no kit in two splits
  maeast-manifest /data/kits --dest data/kits5 --labels-from parent --group-by regex:'^(kit[0-9]+)/' --folds 5
  maeast-manifest --check data/ls              # every *.tsv in the folder
  maeast-manifest --check data/esc50/train.tsv --labels

exit status: 0 ok, 1 problems found / nothing usable, 2 bad command line
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create wav2vec-style manifests (train.tsv / valid.tsv / test.tsv, or fold1..foldK.tsv; optional "
                    ".lbl label files and labels.txt) from a folder of audio, splitting by clip or by whole groups "
                    "(--group-by), or check existing ones with --check.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", nargs="?", metavar="ROOT", help="folder to walk (recursively) for audio files")
    parser.add_argument("--dest", metavar="DIR", help="output folder for the manifests (created if needed)")
    parser.add_argument("--ext", default=DEFAULT_EXTS,
                        help="comma-separated audio extensions, case-insensitive (default: %(default)s)")
    parser.add_argument("--valid-percent", type=float, default=0.01, metavar="FRACTION",
                        help="fraction of the clips for valid.tsv, 0.01 = 1 %%; 0 writes train.tsv only "
                             "(default: %(default)s)")
    parser.add_argument("--test-percent", type=float, default=0.0, metavar="FRACTION",
                        help="fraction of the clips for test.tsv, 0.1 = 10 %%; 0 writes no test split "
                             "(default: %(default)s)")
    parser.add_argument("--group-by", metavar="SOURCE",
                        help="keep each group (speaker, kit, recording session) whole in one split; SOURCE = parent "
                             "(the file's folder) | regex:PATTERN (group 'group', else group 1, else the match, on "
                             "the path relative to ROOT) | csv:COLUMN (a column of the --labels-from csv:FILE table)")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="write K fold manifests fold1..foldK instead of train/valid/test (every clip, and every "
                             "--group-by group, in exactly one fold; stratified by label): the input of "
                             "maeast-evaluate --folds K")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the split (default: %(default)s)")
    parser.add_argument("--path-must-contain", metavar="FRAG",
                        help="keep only files whose path relative to ROOT contains FRAG")
    parser.add_argument("--labels-from", metavar="SOURCE",
                        help="also write train.lbl / valid.lbl / labels.txt; SOURCE = parent | regex:PATTERN | "
                             "csv:FILE")
    parser.add_argument("--csv-columns", default="path,labels", metavar="PATH_COL,LABEL_COL",
                        help="for --labels-from csv:FILE: the path and label columns (default: %(default)s)")
    parser.add_argument("--min-samples", type=int, default=0, metavar="N",
                        help="skip files with fewer than N samples at their own rate (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads reading file headers (default: %(default)s)")
    parser.add_argument("--progress-every", type=int, default=1000, metavar="N",
                        help="report progress every N files on stderr, 0 = never (default: %(default)s)")
    checking = parser.add_argument_group("checking")
    checking.add_argument("--check", metavar="DIR_OR_TSV",
                          help="check every *.tsv in DIR (or one .tsv) instead of creating manifests")
    checking.add_argument("--labels", action="store_true",
                          help="require the .lbl files and labels.txt (checked whenever present anyway)")
    checking.add_argument("--no-audio", action="store_true", help="check the format only, do not open audio")
    checking.add_argument("--sample-rate", type=int, metavar="HZ", help="also report files at any other rate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.check is not None:
            if args.root is not None or args.dest is not None:
                parser.error("--check takes no ROOT / --dest")
            return check(args, parser)
        if args.root is None or args.dest is None:
            parser.error("give ROOT and --dest to create manifests, or --check DIR_OR_TSV")
        if args.labels or args.no_audio or args.sample_rate is not None:
            parser.error("--labels, --no-audio and --sample-rate only apply to --check")
        return create(args, parser)
    except ManifestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
