"""Downstream evaluation of frozen upstreams: the SUPERB protocol (weighted layer sum + linear head) and the HEAR /
ESC-50 MLP protocol, on features extracted once and cached (pure torch; ``maeast-evaluate`` is the command)."""
from .superb import (
                     PROTOCOL_LABELS,
                     HearMLP,
                     PooledClassifier,
                     SuperbHead,
                     TrainConfig,
                     WeightedLayerSum,
                     fold_roles,
                     mean_average_precision,
                     run_protocol,
                     train_head,
                     train_heads,
)

__all__ = ["PROTOCOL_LABELS", "HearMLP", "PooledClassifier", "SuperbHead", "TrainConfig", "WeightedLayerSum",
           "fold_roles", "mean_average_precision", "run_protocol", "train_head", "train_heads"]
