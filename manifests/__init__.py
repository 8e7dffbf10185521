"""Manifest tools for maeast-fairseq: ``maeast-manifest`` (``python -m manifests``).

Creates wav2vec-style ``train.tsv`` / ``valid.tsv`` manifests (plus optional ``.lbl`` label files
and ``labels.txt``) from a folder of audio, and checks existing manifests.  The format itself
lives in :mod:`maeast_fairseq.data.manifest`; see :mod:`manifests.cli` for the options.
"""

from manifests.cli import main

__all__ = ["main"]
