"""The wav2vec-style manifest format: the one place that reads, writes and checks it.

A data folder holds, per split (``train``, ``valid``, ...)::

    {split}.tsv    first line: the absolute root folder of the audio
                   then one line per clip: ``relative/path<TAB>num_samples``
                   (``num_samples`` = soundfile frame count at the file's own sample rate,
                   exactly what fairseq's ``examples/wav2vec/wav2vec_manifest.py`` writes)
    {split}.lbl    optional, one line per clip in the same order as ``{split}.tsv``:
                   the clip's labels separated by commas (``dog,bark``); an empty line = no label
    labels.txt     optional, one label per line: the label list (line order = class index)

A relative path may also be absolute (``os.path.join`` keeps it as is), which is how manifests
with root ``/`` and absolute paths work.  Blank lines are not allowed in ``.tsv`` files
(fairseq's reader rejects them too) nor in ``labels.txt``.

Two ways to read:

* :func:`read_manifest`, :func:`read_labels`, :func:`read_label_list` are strict and raise
  :class:`ManifestError` on the first problem, with the file, the line and the fix;
* :func:`check_manifest` collects *every* problem (format, missing / unreadable / truncated / empty
  audio, wrong sample counts, duplicates, label files) as :class:`Problem` records.

Truncated WAV files (the header declares more audio than the file holds, e.g. an interrupted copy
or download) are decoded by libsndfile up to where the data stops, *without an error*: the frame
count it reports is silently the shorter one.  :func:`maeast_fairseq.audio.wav_truncation` reads the
RIFF header itself to catch them; :func:`probe_audio` records the result and both the manifest tool
and the loader (:mod:`maeast_fairseq.audio`) refuse such files (the missing part is lost; re-copy
the file).

This module needs the standard library, ``soundfile`` and :mod:`maeast_fairseq.audio` (no fairseq).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import soundfile as sf

from ..audio import wav_truncation

__all__ = [
    "LABEL_LIST_NAME",
    "AudioProbe",
    "assign_splits",
    "split_sizes",
    "ManifestEntry",
    "ManifestError",
    "Problem",
    "check_manifest",
    "describe_audio_error",
    "format_labels",
    "label_path_for",
    "map_in_threads",
    "parse_label_line",
    "probe_audio",
    "read_label_list",
    "read_labels",
    "read_manifest",
    "resolve_manifest",
    "write_label_list",
    "write_labels",
    "write_manifest",
]

#: File name of the label list, next to the ``.tsv`` / ``.lbl`` files.
LABEL_LIST_NAME = "labels.txt"
#: Extension of the aligned label files.
LABEL_EXT = ".lbl"

_T = TypeVar("_T")
_R = TypeVar("_R")

_FORMAT_HINT = "expected 'path<TAB>num_samples'"


class ManifestError(ValueError):
    """A manifest, label file or label list is malformed.

    The message names the file and (when it applies) the 1-based line number, and says how to fix it,
    e.g. ``data/train.tsv: line 7: expected 'path<TAB>num_samples', found no tab (...)``.
    """

    def __init__(self, file: str, line: int | None, message: str):
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}: line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ManifestEntry:
    """One clip of a manifest."""

    path: str  #: absolute path (root joined with ``rel``)
    rel: str  #: the path as written in the manifest
    num_samples: int  #: sample count written in the manifest (at the file's own rate)
    line: int  #: 1-based line number in the ``.tsv`` file


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`check_manifest`.

    ``line`` is the 1-based line number, or ``None`` for problems about a whole file.
    ``kind`` is a short stable keyword (``format``, ``missing``, ``unreadable``, ``num-samples``, ...).
    """

    file: str
    line: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class AudioProbe:
    """What soundfile reports about an audio file without decoding it."""

    num_samples: int
    sample_rate: int
    channels: int
    #: for a truncated WAV file: ``(declared frames, frames the file holds)``, else ``None``
    truncated: tuple[int, int] | None = None


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _read_lines(path: str, what: str = "") -> list[str]:
    """Return the lines of a UTF-8 text file without line terminators.

    A final newline does not create an extra (empty) line; ``\\r\\n`` endings are accepted.
    ``what`` (what the file is and how to make it) is added to the "file not found" message.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ManifestError(path, None, "file not found" + (f"; {what}" if what else "")) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(path, None, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ManifestError(path, None, f"cannot read the file ({exc.strerror})") from None
    return text.splitlines()


def _parse_root(path: str, lines: Sequence[str]) -> tuple[str | None, list[Problem]]:
    """Validate line 1 (the root folder). Returns (root or None, problems)."""
    if not lines:
        return None, [
            Problem(path, None, "empty", "the manifest is empty; its first line must be the absolute root folder "
                    "of the audio, followed by 'path<TAB>num_samples' lines (rerun maeast-manifest)")
        ]
    root = lines[0].strip()
    if not root:
        return None, [Problem(path, 1, "root", "empty first line; it must be the absolute root folder of the audio")]
    if "\t" in root:
        return None, [
            Problem(path, 1, "root", f"the first line looks like a clip line ({root!r}), but it must be the root folder; "
                    "insert the absolute root folder of the audio as the first line")
        ]
    if not os.path.isabs(root):
        return None, [
            Problem(path, 1, "root", f"root folder {root!r} is not an absolute path (fairseq runs may change the "
                    "working directory); write the absolute folder, e.g. the output of `realpath`")
        ]
    return root, []


def _parse_entry(path: str, root: str, lineno: int, line: str) -> tuple[ManifestEntry | None, Problem | None]:
    """Parse one clip line. Returns (entry, None) or (None, problem)."""
    if not line.strip():
        return None, Problem(path, lineno, "format", f"blank line; {_FORMAT_HINT}; delete the line")
    if "\t" not in line:
        return None, Problem(
            path, lineno, "format",
            f"{_FORMAT_HINT}, found no tab ({line!r}); separate path and count with a TAB")
    fields = line.split("\t")
    if len(fields) != 2:
        return None, Problem(
            path, lineno, "format",
            f"{_FORMAT_HINT}, found {len(fields)} tab-separated fields; "
            "keep exactly one TAB (paths must not contain tabs)")
    rel, count = fields[0], fields[1].strip()
    if not rel.strip():
        return None, Problem(path, lineno, "format", f"empty path; {_FORMAT_HINT}")
    try:
        num_samples = int(count)
    except ValueError:
        return None, Problem(
            path, lineno, "format",
            f"num_samples {count!r} is not an integer; write the file's frame count "
            "(soundfile.info(path).frames)")
    if num_samples < 0:
        return None, Problem(
            path, lineno, "format",
            f"num_samples {num_samples} is negative; write the file's frame count")
    return ManifestEntry(os.path.join(root, rel), rel, num_samples, lineno), None


@dataclass
class _Parsed:
    root: str | None  #: None when line 1 is unusable (then ``entries`` is empty)
    entries: list[ManifestEntry]
    problems: list[Problem]
    n_clip_lines: int  #: lines after the root line, well-formed or not


def _parse_manifest(path: str) -> _Parsed:
    """Parse a whole ``.tsv`` file, collecting every format problem."""
    lines = _read_lines(path)
    n_clip_lines = max(len(lines) - 1, 0)
    root, problems = _parse_root(path, lines)
    if root is None:
        return _Parsed(None, [], problems, n_clip_lines)
    entries: list[ManifestEntry] = []
    for lineno, line in enumerate(lines[1:], start=2):
        entry, problem = _parse_entry(path, root, lineno, line)
        if problem is not None:
            problems.append(problem)
        else:
            entries.append(entry)
    return _Parsed(root, entries, problems, n_clip_lines)


def read_manifest(tsv_path: str | os.PathLike) -> tuple[str, list[ManifestEntry]]:
    """Read a ``{split}.tsv`` manifest strictly.

    Returns ``(root, entries)``.  Raises :class:`ManifestError` for a missing or empty file, a
    missing / relative root line, and for the first malformed clip line (no tab, wrong field
    count, non-integer or negative sample count, blank line).  Audio files are not opened.
    """
    path = os.fspath(tsv_path)
    parsed = _parse_manifest(path)
    if parsed.problems:
        first, problems = parsed.problems[0], parsed.problems
        more = f" (and {len(problems) - 1} more problems; run `maeast-manifest --check {path}` to list all)" \
            if len(problems) > 1 else ""
        raise ManifestError(first.file, first.line, first.message + more)
    assert parsed.root is not None
    return parsed.root, parsed.entries


def parse_label_line(text: str) -> list[str]:
    """Split one ``.lbl`` line into labels; an empty line means no labels.

    Raises ``ValueError`` for an empty label (``a,,b`` or a trailing comma).
    Surrounding whitespace of each label is removed.
    """
    if not text.strip():
        return []
    labels = [label.strip() for label in text.split(",")]
    if "" in labels:
        raise ValueError(f"empty label in {text!r} (two commas in a row or a leading/trailing comma)")
    return labels


def label_path_for(tsv_path: str | os.PathLike) -> str:
    """The ``.lbl`` file aligned with a ``.tsv`` file (same folder and split name)."""
    base, _ = os.path.splitext(os.fspath(tsv_path))
    return base + LABEL_EXT


def _manifest_path_for(lbl_path: str) -> str:
    base, _ = os.path.splitext(lbl_path)
    return base + ".tsv"


def read_labels(lbl_path: str | os.PathLike, n_expected: int, *,
                manifest_path: str | os.PathLike | None = None) -> list[list[str]]:
    """Read an aligned ``{split}.lbl`` file: one list of labels per clip.

    ``n_expected`` is the number of clips of the manifest; ``manifest_path`` (default: the ``.tsv``
    next to the label file) is only used to name it in the error message when the counts differ.
    """
    path = os.fspath(lbl_path)
    tsv = os.fspath(manifest_path) if manifest_path is not None else _manifest_path_for(path)
    lines = _read_lines(path, f"it holds one line of labels per clip of {tsv}; write it with "
                              "`maeast-manifest AUDIO_DIR --dest DIR --labels-from parent|regex:...|csv:...`")
    if len(lines) != n_expected:
        raise ManifestError(
            path, None,
            f"has {len(lines)} label lines but {tsv} has {n_expected} clips; the label file needs exactly one "
            "line per clip, in the same order (regenerate both with maeast-manifest --labels-from ...)")
    labels: list[list[str]] = []
    for lineno, line in enumerate(lines, start=1):
        try:
            labels.append(parse_label_line(line))
        except ValueError as exc:
            raise ManifestError(path, lineno, f"{exc}; separate labels with single commas") from None
    return labels


def read_label_list(path: str | os.PathLike) -> list[str]:
    """Read ``labels.txt``: one label per line, line order = class index.

    Raises :class:`ManifestError` for an empty file, a blank line, a label containing a comma
    (commas separate labels in ``.lbl`` files) and a duplicated label.
    """
    path = os.fspath(path)
    lines = _read_lines(path, "it lists the labels, one per line (line order = class index); maeast-manifest "
                              "--labels-from ... writes it next to the .tsv / .lbl files")
    if not lines:
        raise ManifestError(path, None, "the label list is empty; write one label per line")
    seen: dict[str, int] = {}
    labels: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        label = line.strip()
        if not label:
            raise ManifestError(path, lineno, "blank line; write one label per line and delete blank lines")
        if "," in label:
            raise ManifestError(path, lineno, f"label {label!r} contains a comma, which separates labels in "
                                "'.lbl' files; rename it")
        if label in seen:
            raise ManifestError(path, lineno, f"label {label!r} already appears on line {seen[label]}; "
                                "every label must appear once")
        seen[label] = lineno
        labels.append(label)
    return labels


def resolve_manifest(data: str | os.PathLike, split: str) -> str:
    """Turn ``DATA_DIR_OR_TSV`` into a ``.tsv`` path: a folder means ``{folder}/{split}.tsv``.

    Raises :class:`ManifestError` naming the manifests that do exist when the file is missing.
    """
    data = os.fspath(data)
    if os.path.isdir(data):
        tsv = os.path.join(data, f"{split}.tsv")
        if not os.path.isfile(tsv):
            found = sorted(name[:-4] for name in os.listdir(data) if name.endswith(".tsv"))
            hint = f"available splits: {', '.join(found)}" if found else \
                "the folder has no .tsv manifest; create them with maeast-manifest ROOT --dest DIR"
            raise ManifestError(tsv, None, f"no manifest for split {split!r}; {hint}")
        return tsv
    if os.path.isfile(data):
        return data
    raise ManifestError(data, None, "no such file or folder; pass a data folder with {split}.tsv files or a .tsv file")


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _write_text(path: str, lines: Iterable[str]) -> None:
    """Write lines (each followed by a newline) through a temporary file, then rename it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_manifest(tsv_path: str | os.PathLike, root: str | os.PathLike,
                   entries: Iterable[tuple[str, int]]) -> int:
    """Write a ``.tsv`` manifest: ``root`` on the first line, then ``rel<TAB>num_samples`` lines.

    ``entries`` yields ``(relative_path, num_samples)``.  Returns the number of clips written.
    Raises ``ValueError`` for a relative root, a path containing a tab or newline, or a negative count.
    """
    root = os.fspath(root)
    if not os.path.isabs(root):
        raise ValueError(f"manifest root must be an absolute path, got {root!r}")

    def lines() -> Iterable[str]:
        yield root
        for rel, num_samples in entries:
            if "\t" in rel or "\n" in rel or "\r" in rel or not rel:
                raise ValueError(f"cannot write path {rel!r} to a manifest (empty, or contains a tab/newline)")
            if int(num_samples) != num_samples or num_samples < 0:
                raise ValueError(f"invalid sample count {num_samples!r} for {rel!r}")
            yield f"{rel}\t{int(num_samples)}"

    written = list(lines())
    _write_text(os.fspath(tsv_path), written)
    return len(written) - 1


def format_labels(labels: Sequence[str]) -> str:
    """Format one clip's labels as a ``.lbl`` line; raises ``ValueError`` for unwritable labels."""
    for label in labels:
        if not label or label != label.strip() or "," in label or "\n" in label or "\r" in label:
            raise ValueError(f"cannot write label {label!r} (empty, surrounding spaces, comma or newline)")
    return ",".join(labels)


def write_labels(lbl_path: str | os.PathLike, labels: Iterable[Sequence[str]]) -> None:
    """Write an aligned ``.lbl`` file: one comma-separated line per clip."""
    _write_text(os.fspath(lbl_path), [format_labels(clip_labels) for clip_labels in labels])


def write_label_list(path: str | os.PathLike, labels: Sequence[str]) -> None:
    """Write ``labels.txt`` (one label per line); raises ``ValueError`` for duplicates or bad labels."""
    if len(set(labels)) != len(labels):
        raise ValueError("duplicate labels in the label list")
    _write_text(os.fspath(path), [format_labels([label]) for label in labels])


# ----------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------


def map_in_threads(fn: Callable[[_T], _R], items: Sequence[_T], workers: int, chunk: int = 4096) -> Iterator[_R]:
    """``map(fn, items)`` run in ``workers`` threads, results in order, at most ``chunk`` tasks queued at once.

    Meant for I/O-bound calls such as :func:`probe_audio`; exceptions raised by ``fn`` propagate.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), chunk):
            yield from pool.map(fn, items[start:start + chunk])


def probe_audio(path: str) -> AudioProbe:
    """Read the frame count, sample rate and channel count of an audio file (header only).

    ``truncated`` is set for a WAV file whose header declares more audio than the file holds
    (:func:`maeast_fairseq.audio.wav_truncation`); ``num_samples`` is then what libsndfile can decode.
    Raises ``soundfile.SoundFileError`` (unreadable / unknown format) or ``OSError``.
    """
    info = sf.info(path)
    return AudioProbe(num_samples=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels),
                      truncated=wav_truncation(path))


def describe_audio_error(exc: BaseException) -> str:
    """A short description of why soundfile could not open a file."""
    if isinstance(exc, sf.LibsndfileError):
        return exc.error_string or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _check_audio(tsv: str, entry: ManifestEntry, sample_rate: int | None) -> list[Problem]:
    if not os.path.exists(entry.path):
        return [Problem(tsv, entry.line, "missing",
                        f"audio file {entry.path} does not exist; fix the path or the root on line 1, "
                        "or remove the line")]
    if not os.path.isfile(entry.path):
        return [Problem(tsv, entry.line, "missing", f"{entry.path} is not a regular file")]
    try:
        probe = probe_audio(entry.path)
    except (sf.SoundFileError, OSError) as exc:
        return [Problem(tsv, entry.line, "unreadable",
                        f"soundfile cannot read {entry.path}: {describe_audio_error(exc)}; "
                        "re-encode or remove the file")]
    problems = []
    if probe.truncated is not None:
        declared, held = probe.truncated
        problems.append(Problem(
            tsv, entry.line, "truncated",
            f"{entry.path} is truncated: its header declares {declared} frames but the file holds {held} "
            "(an interrupted copy or download?); re-copy the file, or remove the line"))
    elif probe.num_samples == 0:
        problems.append(Problem(tsv, entry.line, "empty",
                                f"{entry.path} holds no audio (0 samples); remove the line"))
    if probe.num_samples != entry.num_samples:
        problems.append(Problem(
            tsv, entry.line, "num-samples",
            f"manifest says {entry.num_samples} samples, file has {probe.num_samples} "
            f"({entry.path}); regenerate the manifest"))
    if sample_rate is not None and probe.sample_rate != sample_rate:
        problems.append(Problem(
            tsv, entry.line, "sample-rate",
            f"file is {probe.sample_rate} Hz, expected {sample_rate} Hz ({entry.path})"))
    return problems


def _check_labels(tsv: str, n_lines: int, required: bool) -> list[Problem]:
    """Check the ``.lbl`` file of a manifest and its labels against ``labels.txt``.

    ``n_lines`` is the number of clip lines of the ``.tsv`` (including malformed ones): label line
    ``i`` belongs to manifest line ``i + 1``.
    """
    lbl = label_path_for(tsv)
    label_list_path = os.path.join(os.path.dirname(lbl), LABEL_LIST_NAME)
    if not os.path.exists(lbl):
        if required:
            return [Problem(lbl, None, "labels", f"label file missing; expected one line of labels per clip of {tsv}")]
        return []
    problems: list[Problem] = []
    try:
        lines = _read_lines(lbl)
    except ManifestError as exc:
        return [Problem(exc.file, exc.line, "labels", exc.message)]
    if len(lines) != n_lines:
        problems.append(Problem(
            lbl, None, "labels",
            f"has {len(lines)} label lines but {tsv} has {n_lines} clip lines; the label file needs exactly one "
            "line per clip, in the same order"))
    known: set[str] | None = None
    try:
        known = set(read_label_list(label_list_path))
    except ManifestError as exc:
        if os.path.exists(label_list_path) or required:
            problems.append(Problem(exc.file, exc.line, "labels", exc.message))
    for lineno, line in enumerate(lines, start=1):
        try:
            clip_labels = parse_label_line(line)
        except ValueError as exc:
            problems.append(Problem(lbl, lineno, "labels", str(exc)))
            continue
        if known is None:
            continue
        unknown = [label for label in clip_labels if label not in known]
        if unknown:
            problems.append(Problem(
                lbl, lineno, "unknown-label",
                f"label(s) {', '.join(repr(u) for u in unknown)} not in {label_list_path}; add them there or fix "
                "the label"))
    return problems


def check_manifest(tsv_path: str | os.PathLike, *, sample_rate: int | None = None, check_audio: bool = True,
                   labels: bool | None = None, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Check a manifest and return every problem found (an empty list means it is fine).

    Checks, each reported with its line number:

    * format: empty file, root line, blank lines, lines without a tab, wrong field count,
      non-integer / negative sample counts;
    * duplicates: the same audio file listed twice;
    * with ``check_audio``: missing files, files soundfile cannot read, sample counts that differ
      from the file's frame count, and (when ``sample_rate`` is given) files at another rate;
    * labels: ``labels=None`` checks the ``.lbl`` file only if it exists, ``True`` requires it (and
      ``labels.txt``), ``False`` skips label checks.  Checked: one line per clip, well-formed
      label lines, labels present in ``labels.txt``.

    ``workers`` > 1 opens the audio files in that many threads; ``progress(done, total)`` is called
    after each audio file.  Problems are returned sorted by file and line.
    """
    tsv = os.fspath(tsv_path)
    try:
        parsed = _parse_manifest(tsv)
    except ManifestError as exc:
        return [Problem(exc.file, exc.line, "unreadable", exc.message)]
    root, entries, problems = parsed.root, parsed.entries, parsed.problems
    if root is None:
        return problems
    if check_audio and not os.path.isdir(root):
        problems.append(Problem(tsv, 1, "root", f"root folder {root} does not exist"))

    first_line: dict[str, int] = {}
    for entry in entries:
        key = os.path.normpath(entry.path)
        if key in first_line:
            problems.append(Problem(tsv, entry.line, "duplicate",
                                    f"{entry.rel} is already listed on line {first_line[key]}; remove one"))
        else:
            first_line[key] = entry.line

    if check_audio:
        def check_one(entry: ManifestEntry) -> list[Problem]:
            return _check_audio(tsv, entry, sample_rate)

        for done, entry_problems in enumerate(map_in_threads(check_one, entries, workers), start=1):
            problems.extend(entry_problems)
            if progress is not None:
                progress(done, len(entries))

    if labels is not False:
        problems.extend(_check_labels(tsv, parsed.n_clip_lines, required=bool(labels)))

    problems.sort(key=lambda p: (p.file, p.line if p.line is not None else 0))
    return problems


# ----------------------------------------------------------------------------------------------
# Splitting: group-aware, stratified by label
# ----------------------------------------------------------------------------------------------


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Clip counts of the held-out splits for ``n`` clips: ``round(n * fraction)`` each, at least 1 where the fraction
    is > 0 (and there are enough clips), so that at least one clip is left for training.

    Raises ``ValueError`` when the fractions leave nothing to train on.
    """
    if sum(fractions) >= 1:
        raise ValueError(f"the held-out fractions {list(fractions)} add up to {sum(fractions):g}; they must leave "
                         "some clips for training (sum < 1)")
    sizes = [max(round(n * f), 1) if f > 0 else 0 for f in fractions]
    while sum(sizes) > n - 1 and any(sizes):  # keep one clip for training: shrink the largest held-out split
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def assign_splits(groups: Sequence[str], labels: Sequence[Sequence[str]] | None, targets: Sequence[int],
                  seed: int) -> list[int]:
    """Assign every clip to one of ``len(targets)`` splits so that all clips of a group land in the same split.

    ``groups[i]`` is clip ``i``'s group (speaker, kit, session; give each clip its own group for a split by clip),
    ``labels[i]`` its labels (or ``labels=None``) and ``targets[s]`` the number of clips split ``s`` should get
    (they add up to the number of clips). Returns the split index of every clip.

    Greedy and deterministic in ``seed``: the groups, in a seeded random order and then largest first, each go to the
    split that most needs their labels (the largest relative shortfall of those labels against the split's share of
    them: stratification by label where the groups allow it), among the splits still below their clip target (all
    splits when none is). Groups of one clip therefore give exactly ``targets`` clips per split. A split that is still
    empty at the end while another holds two groups or more takes the smallest group of the largest split, so that
    every split with a target > 0 gets a group when there are enough groups. Raises ``ValueError`` when there are
    fewer groups than splits with a target > 0.
    """
    n = len(groups)
    if sum(targets) != n:
        raise ValueError(f"split targets {list(targets)} do not add up to the {n} clips")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    wanted = [s for s, t in enumerate(targets) if t > 0]
    if len(members) < len(wanted):
        raise ValueError(f"only {len(members)} group(s) for {len(wanted)} splits: every split needs a whole group; "
                         "use fewer splits or a finer grouping")
    label_names = sorted({lab for labs in labels for lab in labs}) if labels is not None else []
    label_index = {lab: j for j, lab in enumerate(label_names)}
    n_labels = len(label_names)
    totals = [0] * n_labels
    hist: dict[str, list[int]] = {}
    for g, idx in members.items():
        h = [0] * n_labels
        if labels is not None:
            for i in idx:
                for lab in labels[i]:
                    h[label_index[lab]] += 1
        hist[g] = h
        for j in range(n_labels):
            totals[j] += h[j]
    share = [t / n if n else 0.0 for t in targets]
    order = sorted(members)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
    count = [0] * len(targets)
    per_label = [[0] * n_labels for _ in targets]
    split_of_group: dict[str, int] = {}

    def label_need(s: int, g: str) -> float:
        need = 0.0
        for j, k in enumerate(hist[g]):
            if k:
                target = share[s] * totals[j]
                need += k * (target - per_label[s][j]) / target if target > 0 else -k
        return need

    for g in order:
        open_splits = [s for s in wanted if count[s] < targets[s]] or wanted
        best = max(open_splits, key=lambda s: (round(label_need(s, g), 9),
                                               (targets[s] - count[s]) / targets[s], -s))
        split_of_group[g] = best
        count[best] += len(members[g])
        for j, k in enumerate(hist[g]):
            per_label[best][j] += k
    for s in wanted:  # a split left empty takes the smallest group of the split with the most groups
        if count[s] == 0:
            n_groups = Counter(split_of_group.values())
            donor = max(wanted, key=lambda d: (n_groups.get(d, 0), count[d]))
            g = min((g for g in order if split_of_group[g] == donor), key=lambda g: len(members[g]))
            split_of_group[g] = s
            count[s] += len(members[g])
            count[donor] -= len(members[g])
    out = [0] * n
    for g, idx in members.items():
        for i in idx:
            out[i] = split_of_group[g]
    return out
