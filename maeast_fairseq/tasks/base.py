"""What every task of ours shares: audio in, no dictionaries, no token-count position limit."""
import logging
import os

from fairseq.tasks import FairseqTask

logger = logging.getLogger(__name__)


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


def launch_dir():
    """The folder the command was started in, when ``fairseq-hydra-train`` (hydra) has since moved the working
    directory to ``hydra.run.dir``; ``None`` otherwise (``fairseq-train``, or hydra without a change of folder)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if not HydraConfig.initialized():
            return None
        original = get_original_cwd()
    except Exception:  # hydra absent or not running this process
        return None
    return original if os.path.realpath(original) != os.path.realpath(os.getcwd()) else None


def resolve_data_folder(cfg, what: str) -> str:
    """Make ``cfg.data`` an absolute folder: a relative ``task.data`` means the folder the command was started in
    (hydra runs the job in ``hydra.run.dir``, where the relative path would name nothing), then the working directory.

    ``what`` says what the folder should hold (for the error). Raises ``FileNotFoundError`` naming every folder
    looked in. Under hydra, also warns when ``checkpoint.save_dir`` is relative (it lands inside ``hydra.run.dir``).
    """
    data = str(cfg.data)
    launch = launch_dir()
    if launch is not None:
        _warn_relative_save_dir(launch)
    tried = [data] if os.path.isabs(data) else \
        ([os.path.join(launch, data)] if launch is not None else []) + [os.path.abspath(data)]
    for folder in tried:
        if os.path.isdir(folder):
            if folder != data:
                if launch is not None and folder == tried[0]:
                    logger.info(f"task.data={data!r} is relative: read from the launch folder, {folder} "
                                f"(fairseq-hydra-train runs in hydra.run.dir={os.getcwd()})")
                try:
                    from omegaconf import open_dict

                    with open_dict(cfg):
                        cfg.data = folder
                except Exception:  # a plain dataclass
                    cfg.data = folder
            return folder
    looked = " nor ".join(tried)
    moved = (f"; fairseq-hydra-train runs in hydra.run.dir={os.getcwd()}, not in the launch folder {launch}"
             if launch is not None else "")
    raise FileNotFoundError(
        f"task.data={data!r} is not a folder (there is no {looked}{moved}). Fix: point task.data at the folder "
        f"holding {what}, e.g. task.data=$PWD/data (write it with `maeast-manifest AUDIO_DIR --dest DATA_DIR`)")


def _warn_relative_save_dir(launch: str) -> None:
    """Under hydra: say where a relative ``checkpoint.save_dir`` (or fairseq's default ``checkpoints``) lands."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:
        return
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "checkpoint.save_dir"]
    save_dir = given[-1] if given else None
    if save_dir is not None and os.path.isabs(save_dir):
        return
    setting = f"checkpoint.save_dir={save_dir}" if save_dir is not None else \
        "checkpoint.save_dir is not set on the command line (fairseq's default: 'checkpoints')"
    logger.warning(
        f"{setting}: a relative folder; fairseq-hydra-train runs in hydra.run.dir={os.getcwd()}, so checkpoints "
        f"go to {os.path.abspath(save_dir or 'checkpoints')}{'' if save_dir else ' (unless the yaml sets one)'}, "
        f"not under the launch folder {launch}. Pass an absolute path to choose, e.g. checkpoint.save_dir=$PWD/ckpt")


class AudioTask(FairseqTask):
    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
