"""What the criteria share in ``reduce_metrics``: the sum of one logged value over the logging outputs fairseq hands
them (every worker's, every step's of the log interval). Every value the criteria log is a sum over what it was
computed on (``logging_outputs_can_be_summed``), so a mean is a ratio of two such totals."""
from typing import Dict, Sequence

import torch


def logged_total(logging_outputs: Sequence[Dict], key: str) -> float:
    """``key`` summed over ``logging_outputs`` (0 where an output lacks it; tensors summed whole), in float64."""
    return float(sum(torch.as_tensor(log.get(key, 0)).double().sum() for log in logging_outputs))
