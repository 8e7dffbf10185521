"""What every task of ours shares: audio in, no dictionaries, no token-count position limit."""
import os

from fairseq.tasks import FairseqTask


def split_manifest(data: str, split: str) -> str:
    """``{data}/{split}.tsv``; a missing one raises ``FileNotFoundError`` naming the splits that do exist."""
    path = os.path.join(data, f"{split}.tsv")
    if not os.path.isfile(path):
        found = sorted(n[:-4] for n in os.listdir(data) if n.endswith(".tsv")) if os.path.isdir(data) else []
        have = f"task.data has the splits {', '.join(found)}" if found else "task.data holds no .tsv manifest"
        raise FileNotFoundError(
            f"no manifest {path} for split {split!r} ({have}). Fix: write it with `maeast-manifest AUDIO_DIR --dest "
            f"{data}`, or name an existing split (dataset.train_subset / dataset.valid_subset)")
    return path


class AudioTask(FairseqTask):
    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
