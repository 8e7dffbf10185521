"""Real recordings for the demo, from Debian packages (``apt-get download`` + ``dpkg -x``), cached and idempotent.

* :func:`fetch_packages` downloads and unpacks packages into ``CACHE/pkgs/<name>/`` (skipped when unpacked already);
  it raises :class:`FetchError` with a clear message when apt-get / dpkg are missing or the download fails.
* :func:`soundfont_samples` writes the recorded samples inside a SoundFont 2 bank (the ``smpl`` chunk: 16-bit PCM,
  one region per ``shdr`` record) as wav files: real instrument and drum recordings, no synthesis needed;
* :func:`prepare_pretraining` turns a set of folders into a bounded pretraining corpus: 16 kHz mono wav pieces of at
  most ``piece_seconds`` (decoded and resampled ONCE here, so the three pretrainings don't decode ogg/flac again).
* :func:`prepare_drums` builds the drum-instrument task from the Hydrogen drum kits: every kit's ``drumkit.xml``
  names its instruments, mapped to coarse classes; evaluated by k-fold over groups of WHOLE kits (``KIT_FOLDS``).
* :func:`nearest_duplicate` is the leak check: how close any held-out clip comes to any pretraining piece.
"""
from __future__ import annotations

import glob
import io
import os
import random
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: reading packages needs none
    import torch

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")

#: pretraining packages: recorded instruments and drums; no Hydrogen kit (every kit is held out in one
#: fold of the drum task). The samples of a General-MIDI SoundFont are recordings of 128 instruments and several drum
#: kits. Speech (fillets-ng-data-cs, klettres-data) was the first corpus; for this drum task it gave smaller gains
#: (README). Adding the MuseScore General bank (musescore-general-soundfont, .sf3: 42 min more; add it here and to
#: SOUNDFONT_PACKAGES) was measured too: MAE-AST's gap over its twin grew at 2000 updates, SSAST's shrank to within
#: the seed spread (README); not used.
PRETRAIN_PACKAGES = ("sonic-pi-samples", "lmms-common", "fluid-soundfont-gm")
#: pretraining packages whose audio is the recorded samples inside SoundFont banks (.sf2, or .sf3 with Ogg Vorbis)
SOUNDFONT_PACKAGES = ("fluid-soundfont-gm",)
DRUM_PACKAGES = ("hydrogen-drumkits", "hydrogen-data")

#: coarse drum classes, matched on the lower-cased instrument name in this order (first hit wins)
DRUM_CLASSES: Sequence[Tuple[str, str]] = (
    ("hihat", r"hi-?\s*hat|\bhh\b|\bhat\b|\bhats?\b|ohh"),
    ("cymbal", r"crash|ride|splash|china|cymbal"),
    ("kick", r"kick|bass\s*drum|bassdrum|\bbd\b"),
    ("snare", r"snare"),
    ("tom", r"\btom|tom\b|tom\s*\d|tomhi|floor"),
)
#: the drum task is evaluated by K-FOLD CROSS-VALIDATION OVER KIT GROUPS: each fold is a group of whole kits, tested
#: once while the others train (and the next one validates). Kits that share recordings are one group: the Millo*
#: kits and Audiophob are built on the same template; GMRockKit and The Black Pearl 1.0 share 71 recordings (found by
#: the demo's leak check: onset fingerprints equal to 4 decimals). Kits not named here go to the last fold.
KIT_FOLDS: Sequence[Tuple[str, Sequence[str]]] = (
    ("rock", ("GMRockKit", "The Black Pearl 1.0")),
    ("forzee", ("ForzeeStereo",)),
    ("millo", ("Millo-Drums_v.1", "Millo_MultiLayered2", "Millo_MultiLayered3", "Audiophob")),
    ("pacific", ("BJA_Pacific",)),
    ("others", ()),  # ColomboAcousticDrumkit, TR808EmulationKit, VariBreaks, ElectricEmpireKit, HardElectro1, ...
)


class FetchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Debian packages
# ----------------------------------------------------------------------------------------------------------------


def _apt_download(name: str, dest: str) -> str:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise FetchError("apt-get / dpkg not found: this is not a Debian-like system. Point the demo at a folder "
                         "of audio instead (AUDIO_DIR=... or --audio-dir ...)")

    def attempt():
        return subprocess.run(["apt-get", "download", name], cwd=dest, capture_output=True, text=True)

    proc = attempt()
    if proc.returncode != 0 and os.geteuid() == 0 and ("Unable to locate" in proc.stderr or
                                                       "no installation candidate" in proc.stderr):
        log(f"apt-get download {name}: {proc.stderr.strip().splitlines()[-1]}; running apt-get update once")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        proc = attempt()
    if proc.returncode != 0:
        raise FetchError(f"apt-get download {name} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    debs = sorted(glob.glob(os.path.join(dest, f"{name}_*.deb")))
    if not debs:
        raise FetchError(f"apt-get download {name} wrote no .deb in {dest}")
    return debs[-1]


def fetch_packages(names: Iterable[str], cache: str) -> Dict[str, str]:
    """Download + unpack each package into ``cache/pkgs/<name>``; returns {name: unpacked folder}. Idempotent."""
    out = {}
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    for name in names:
        target = os.path.join(cache, "pkgs", name)
        done = os.path.join(target, ".unpacked")
        if os.path.isfile(done):
            log(f"{name}: cached in {target}")
            out[name] = target
            continue
        log(f"{name}: apt-get download + dpkg -x -> {target}")
        deb = _apt_download(name, debs)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        proc = subprocess.run(["dpkg", "-x", deb, target], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FetchError(f"dpkg -x {deb} failed: {proc.stderr.strip()[-400:]}")
        open(done, "w").close()
        os.remove(deb)  # the unpacked tree is the cache
        out[name] = target
    return out


# ----------------------------------------------------------------------------------------------------------------
# Audio preparation
# ----------------------------------------------------------------------------------------------------------------


def audio_files(root: str) -> List[str]:
    found = []
    for d, _, files in os.walk(root, followlinks=True):
        found += [os.path.join(d, f) for f in files if f.lower().endswith(AUDIO_EXTS)]
    return sorted(found)


def _write_wav(path: str, wav: np.ndarray, sr: int = 16000) -> None:
    import soundfile as sf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wav.astype(np.float32), sr, subtype="PCM_16")


def _load16k(path: str, quiet: bool = False) -> Optional[np.ndarray]:
    from maeast_fairseq.audio import load_audio
    try:
        return load_audio(path, 16000).numpy()
    except Exception as exc:  # unreadable / empty files are skipped (a few lmms ogg files libsndfile can't read)
        if not quiet:
            log(f"  skipped {path}: {exc}")
        return None


def _riff_chunks(buf: bytes, start: int, end: int):
    while start + 8 <= end:
        cid, size = struct.unpack_from("<4sI", buf, start)
        yield cid, start + 8, size
        start += 8 + size + (size & 1)


def read_soundfont_samples(path: str) -> Tuple[np.ndarray, List[Tuple[str, int, int, int, int]]]:
    """A SoundFont's sample pool and sample headers: (pool, [(name, start, end, rate, type)]).

    SF2 is RIFF 'sfbk': LIST 'sdta' holds ``smpl`` (all samples, 16-bit little-endian, one pool) and LIST 'pdta'
    holds ``shdr`` (46-byte records: name[20], start, end, loop start, loop end (uint32 sample offsets into the pool),
    rate (uint32), original pitch, pitch correction, sample link, sample type (1 mono, 2 right, 4 left, 8 linked;
    0x8000 = ROM)); the last record is the terminal 'EOS'. SF3 (MuseScore's compressed banks) is the same file with
    every sample an Ogg Vorbis stream: type bit ``SF3_VORBIS`` (0x10) is set and start / end are BYTE offsets into
    ``smpl``; then the pool is returned as ``uint8`` (decode a sample with :func:`soundfont_sample`).
    """
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] != b"RIFF" or buf[8:12] != b"sfbk":
        raise FetchError(f"{path}: not a SoundFont 2 or 3 file (no RIFF 'sfbk' header)")
    smpl, shdr = None, None
    for cid, off, size in _riff_chunks(buf, 12, len(buf)):
        if cid != b"LIST":
            continue
        for sub, o2, s2 in _riff_chunks(buf, off + 4, off + size):
            if sub == b"smpl":
                smpl = (o2, s2)
            elif sub == b"shdr":
                shdr = (o2, s2)
    if smpl is None or shdr is None:
        raise FetchError(f"{path}: no 'smpl' or 'shdr' chunk: not a SoundFont with recorded samples")
    headers = []
    for i in range(shdr[1] // 46 - 1):  # minus the terminal record
        name, start, end, _, _, rate, _, _, _, kind = struct.unpack_from("<20sIIIIIBbHH", buf, shdr[0] + 46 * i)
        headers.append((name.split(b"\0")[0].decode("latin-1"), start, end, rate, kind))
    compressed = any(h[4] & SF3_VORBIS for h in headers)
    pool = np.frombuffer(buf, np.uint8 if compressed else "<i2", smpl[1] // (1 if compressed else 2), smpl[0])
    return pool, headers


#: SF3 sample-type bit: the sample is an Ogg Vorbis stream (start / end are byte offsets)
SF3_VORBIS = 0x10


def soundfont_sample(pool: np.ndarray, start: int, end: int, rate: int, kind: int,
                     max_seconds: float = 0.0) -> Tuple[np.ndarray, int]:
    """One sample of a :func:`read_soundfont_samples` pool as float32 in [-1, 1] and its rate (the first
    ``max_seconds`` when > 0)."""
    if kind & SF3_VORBIS:
        import soundfile as sf
        wav, rate = sf.read(io.BytesIO(pool[start:end].tobytes()), dtype="float32", always_2d=True)
        wav = wav[:, 0]
    else:  # PCM: convert only the part that is kept
        wav = pool[start:min(end, start + int(max_seconds * rate)) if max_seconds > 0 else end].astype(np.float32)
        wav /= 32768.0
    if max_seconds > 0:
        wav = wav[:int(max_seconds * rate)]
    return wav, rate


def soundfont_samples(bank: str, dest: str, *, min_seconds: float = 0.3, max_seconds: float = 3.0) -> List[str]:
    """Write the mono / left-channel samples of the SoundFont ``bank`` (.sf2, or .sf3 with Ogg Vorbis samples) longer
    than ``min_seconds`` (the first ``max_seconds`` of each) as wav files in ``dest``, at their own rate; right
    channels of stereo pairs are skipped (near-duplicates of the left), as are silent ones and samples that do not
    decode (counted). Idempotent (a ``.done`` marker)."""
    import soundfile as sf
    marker = os.path.join(dest, ".done")
    if os.path.isfile(marker):
        return audio_files(dest)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    pool, headers = read_soundfont_samples(bank)
    kept, broken = 0, 0
    for i, (_name, start, end, rate, kind) in enumerate(headers):
        if (kind & ~SF3_VORBIS) not in (1, 4) or rate <= 0 or end > len(pool):
            continue
        try:
            wav, rate = soundfont_sample(pool, start, end, rate, kind, max_seconds)
        except Exception:  # noqa: BLE001 (a damaged Ogg stream: counted, the others are kept)
            broken += 1
            continue
        if len(wav) < min_seconds * rate or float(np.abs(wav).max()) < 1e-3:
            continue
        sf.write(os.path.join(dest, f"{i:04d}.wav"), wav, rate)
        kept += 1
    note = f"{kept} of {len(headers)} samples from {bank}" + (f"; {broken} did not decode" if broken else "")
    open(marker, "w").write(note + "\n")
    log(f"{os.path.basename(bank)}: {kept} of {len(headers)} recorded samples written to {dest}"
        + (f" ({broken} did not decode, skipped)" if broken else ""))
    return audio_files(dest)


def prepare_pretraining(sources: Dict[str, List[str]], dest: str, *, max_seconds: float, piece_seconds: float = 3.0,
                        min_seconds: float = 0.5, seed: int = 0) -> Tuple[str, Dict[str, float]]:
    """Cut a seeded, bounded subset of ``sources`` ({source name: [files]}) into 16 kHz wav pieces under ``dest``.

    Every source gets an equal share of ``max_seconds`` (what a source doesn't use goes to the others). Idempotent:
    a ``.done`` marker with the same settings skips the work. Returns (dest, {source: seconds}).
    """
    key = f"v2 {sorted((k, len(v)) for k, v in sources.items())} {max_seconds} {piece_seconds} {min_seconds} {seed}"
    marker = os.path.join(dest, ".done")
    if os.path.isfile(marker) and open(marker).read().split("\n", 1)[0] == key:
        secs = eval(open(marker).read().split("\n", 1)[1])  # noqa: S307 (our own file)
        log(f"pretraining corpus cached in {dest} ({sum(secs.values()) / 60:.1f} min)")
        return dest, secs
    shutil.rmtree(dest, ignore_errors=True)
    rng = random.Random(seed)
    names = sorted(sources, key=lambda k: (len(sources[k]), k))  # small sources first: leftovers go to big ones
    budget = max_seconds
    used: Dict[str, float] = {}
    piece = int(piece_seconds * 16000)
    for i, name in enumerate(names):
        share = budget / (len(names) - i)
        files = list(sources[name])
        rng.shuffle(files)
        got = 0.0
        for n_file, f in enumerate(files):
            if got >= share:
                break
            wav = _load16k(f, quiet=True)
            if wav is None or len(wav) < min_seconds * 16000 or float(np.abs(wav).max()) < 1e-4:
                continue
            for k, start in enumerate(range(0, len(wav), piece)):
                chunk = wav[start:start + piece]
                if len(chunk) < min_seconds * 16000 or got >= share:
                    break
                _write_wav(os.path.join(dest, name, f"{n_file:05d}_{k:02d}.wav"), chunk)
                got += len(chunk) / 16000
        used[name] = round(got, 1)
        budget -= got
        log(f"  pretraining audio from {name}: {got / 60:.1f} min")
    with open(marker, "w") as fh:
        fh.write(key + "\n" + repr(used))
    return dest, used


def write_unlabelled_manifest(root: str, dest: str, valid_fraction: float = 0.05, seed: int = 1) -> Dict[str, int]:
    """train.tsv / valid.tsv over every audio file under ``root`` (sample counts at the file's own rate)."""
    import soundfile as sf

    from maeast_fairseq.data.manifest import write_manifest
    files = audio_files(root)
    if not files:
        raise FetchError(f"no audio files ({', '.join(AUDIO_EXTS)}) under {root}")
    entries = [(os.path.relpath(f, root), sf.info(f).frames) for f in files]
    random.Random(seed).shuffle(entries)
    n_valid = max(1, int(round(valid_fraction * len(entries)))) if len(entries) > 1 else 0
    os.makedirs(dest, exist_ok=True)
    write_manifest(os.path.join(dest, "valid.tsv"), os.path.abspath(root), entries[:n_valid] or entries[:1])
    write_manifest(os.path.join(dest, "train.tsv"), os.path.abspath(root), entries[n_valid:] or entries)
    return {"train": len(entries) - n_valid, "valid": n_valid}


# ----------------------------------------------------------------------------------------------------------------
# The drum task (Hydrogen kits, whole kits held out)
# ----------------------------------------------------------------------------------------------------------------


def drum_class(instrument: str) -> Optional[str]:
    name = instrument.lower()
    if re.search(r"stick|rim\s*click|\bclick\b|cowbell|bell\b|tambourine", name) and not re.search(r"ride", name):
        return None  # side sticks, rim clicks, bells: neither drum head nor cymbal; left out
    for cls, pattern in DRUM_CLASSES:
        if re.search(pattern, name):
            return cls
    return None


def parse_kit(kit_dir: str) -> List[Tuple[str, str, str]]:
    """[(audio path, instrument name, class)] for every layer of every instrument of a Hydrogen kit."""
    root = ET.parse(os.path.join(kit_dir, "drumkit.xml")).getroot()
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    out = []
    for inst in root.iter(ns + "instrument"):
        name_el = inst.find(ns + "name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        cls = drum_class(name)
        if cls is None:
            continue
        for fn in inst.iter(ns + "filename"):
            path = os.path.join(kit_dir, (fn.text or "").strip())
            if fn.text and os.path.isfile(path):
                out.append((path, name, cls))
    return out


def find_kits(roots: Iterable[str]) -> Dict[str, str]:
    kits = {}
    for r in roots:
        for xml in glob.glob(os.path.join(r, "**", "drumkit.xml"), recursive=True):
            kits[os.path.basename(os.path.dirname(xml))] = os.path.dirname(xml)
    return kits


def kit_fold(kit: str, folds: Optional[Sequence[Tuple[str, Sequence[str]]]] = None) -> str:
    """The fold (kit group) of a kit, by name (spaces / underscores and case ignored); unnamed kits: the last fold.
    ``folds`` defaults to :data:`KIT_FOLDS`."""
    folds = KIT_FOLDS if folds is None else folds
    def norm(name: str) -> str:
        return re.sub(r"[\s_]+", " ", name).strip().lower()
    for fold, kits in folds:
        if norm(kit) in map(norm, kits):
            return fold
    return folds[-1][0]


def prepare_drums(kits: Dict[str, str], dest: str, *, max_seconds: float = 2.0,
                  folds: Optional[Sequence[Tuple[str, Sequence[str]]]] = None) -> Dict:
    """16 kHz wav copies (<= ``max_seconds``) of every classed drum sample, and in ``dest/data``: ``all.tsv`` +
    ``all.lbl`` (every clip), ``folds.txt`` (each clip's fold: a group of WHOLE kits) and ``labels.txt``, for
    ``maeast-evaluate --folds K --fold-file folds.txt --fold-split all``. ``folds``: :data:`KIT_FOLDS` by default.
    Returns a summary."""
    folds = KIT_FOLDS if folds is None else folds
    import soundfile as sf

    from maeast_fairseq.data.manifest import write_label_list, write_labels, write_manifest
    audio_root = os.path.join(dest, "audio")
    rows: List[Tuple[str, int, str, str]] = []
    per_kit: Dict[str, Dict[str, int]] = {}
    seen = set()
    for kit in sorted(kits):
        fold = kit_fold(kit, folds)
        for i, (path, _inst, cls) in enumerate(parse_kit(kits[kit])):
            if (kit, path) in seen:
                continue
            seen.add((kit, path))
            safe_kit = re.sub(r"[^A-Za-z0-9_.-]+", "_", kit)
            rel = os.path.join(safe_kit, f"{i:03d}_{cls}.wav")
            out = os.path.join(audio_root, rel)
            if not os.path.isfile(out):
                wav = _load16k(path)
                if wav is None or len(wav) < 400:
                    continue
                _write_wav(out, wav[:int(max_seconds * 16000)])
            rows.append((rel, sf.info(out).frames, cls, fold))
            per_kit.setdefault(kit, {}).setdefault(cls, 0)
            per_kit[kit][cls] += 1
    classes = sorted({c for _, _, c, _ in rows})
    names = [f for f, _ in folds]
    sizes = {f: sum(1 for r in rows if r[3] == f) for f in names}
    empty = [f for f, n in sizes.items() if n == 0]
    if empty:
        raise FetchError(f"the drum task has no clips in fold(s) {empty} (kits found: {sorted(kits)})")
    data = os.path.join(dest, "data")
    os.makedirs(data, exist_ok=True)
    write_manifest(os.path.join(data, "all.tsv"), os.path.abspath(audio_root), [(p, n) for p, n, _, _ in rows])
    write_labels(os.path.join(data, "all.lbl"), [[c] for _, _, c, _ in rows])
    with open(os.path.join(data, "folds.txt"), "w") as f:
        f.write("".join(r[3] + "\n" for r in rows))
    write_label_list(os.path.join(data, "labels.txt"), classes)
    kits_of = {f: sorted(k for k in per_kit if kit_fold(k, folds) == f) for f in names}
    return {"data": data, "classes": classes, "clips": sizes, "kits": kits_of, "folds": names,
            "per_kit": per_kit}


# ----------------------------------------------------------------------------------------------------------------
# Leak check
# ----------------------------------------------------------------------------------------------------------------


def _onset_print(path: str, frames: int = 48) -> torch.Tensor:
    """The first ``frames`` 10 ms frames of a 64-bin log-mel, centred and unit-norm (a recording's fingerprint)."""
    import torch

    from maeast_fairseq.audio import load_audio
    from maeast_fairseq.fbank import FbankConfig, fbank
    need = (frames + 2) * 160 + 400
    wav = torch.as_tensor(load_audio(path, 16000)[:need], dtype=torch.float32)
    wav = torch.nn.functional.pad(wav, (0, max(0, need - len(wav))))
    feats = fbank(wav[None], FbankConfig(num_mel_bins=64))[0][0][:frames]
    feats = feats - feats.mean()
    return (feats / feats.norm().clamp_min(1e-8)).flatten()


def onset_prints(paths: Sequence[str]) -> torch.Tensor:
    """(len(paths), 48 * 64) unit-norm onset fingerprints (see :func:`_onset_print`)."""
    import torch
    return torch.stack([_onset_print(p) for p in paths])


def nearest_duplicate(held_out: Sequence[str], pretraining: Sequence[str], threshold: float = 0.99,
                      held_out_prints: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """The highest cosine similarity between any held-out clip's onset fingerprint and any pretraining piece's
    (``max_similarity``; ``min_similarity``: the clip whose nearest piece is farthest; ``clips_at_threshold``: how
    many clips have a piece at ``threshold`` or above, i.e. look like a copy).

    The same recording (also re-encoded or resampled) scores ~1.0; different recordings of the same kind of sound
    score lower (~0.9-0.97 for drum hits). ``held_out_prints``: the held-out fingerprints, when already computed."""
    import torch
    if not held_out or not pretraining:
        return {"max_similarity": None}
    a = onset_prints(held_out) if held_out_prints is None else held_out_prints
    best = torch.full((len(held_out),), -1.0)
    arg = torch.zeros(len(held_out), dtype=torch.long)
    for i in range(0, len(pretraining), 256):
        b = onset_prints(pretraining[i:i + 256])
        val, idx = (a @ b.T).max(1)
        better = val > best
        best = torch.where(better, val, best)
        arg = torch.where(better, idx + i, arg)
    k = int(best.argmax())
    return {"max_similarity": round(float(best[k]), 4), "min_similarity": round(float(best.min()), 4),
            "clip": held_out[k], "piece": pretraining[int(arg[k])], "clips": len(held_out), "pieces": len(pretraining),
            "threshold": threshold, "clips_at_threshold": int((best >= threshold).sum())}
