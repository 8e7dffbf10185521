"""Images in tensorboard during pretraining (``common.tensorboard_logdir`` set): at every validation, the first clip
of the first batch, its mask and the model's reconstruction of the hidden patches (MAE-AST / SSAST; EAT: the input
spectrogram), drawn by :func:`maeast_fairseq.demo.plots.reconstruction_figure`, under ``<logdir>/valid_images``
(tag ``reconstruction``, step = the update). Needs matplotlib and tensorboardX; without them a warning, no image."""
import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)
_warned = False
_writers: dict = {}


def is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_rank() != 0)


def log_reconstruction(logdir: str, model, fbank: torch.Tensor, frame_padding: Optional[torch.Tensor],
                       step: int, seed: int = 0) -> Optional[str]:
    """Write the figure of the first clip of ``fbank`` (B, T, F) (its real frames only) to tensorboard; returns the
    folder written, or None (not the main process, or matplotlib / tensorboardX missing)."""
    global _warned
    if not is_main_process():
        return None
    try:
        from tensorboardX import SummaryWriter

        from .demo.plots import figure_array, reconstruction_figure
    except ImportError as err:
        if not _warned:
            logger.warning(f"no reconstruction images in tensorboard: {err} (pip install matplotlib tensorboardX)")
            _warned = True
        return None
    x = fbank[:1]
    if frame_padding is not None:
        x = x[:, : int((~frame_padding[0]).sum())]
    patch = model.tokenizer.patch_time if hasattr(model, "tokenizer") else 1
    if x.shape[1] < patch:
        return None
    was_training = model.training
    model.eval()
    try:
        img = figure_array(reconstruction_figure(model, x, f"valid clip 0, update {step}", seed))
    finally:
        model.train(was_training)
    folder = os.path.join(logdir, "valid_images")
    if folder not in _writers:  # one writer per folder: event files are named by the second they are opened in
        _writers[folder] = SummaryWriter(folder)
    _writers[folder].add_image("reconstruction", img, step, dataformats="HWC")
    _writers[folder].flush()
    return folder
