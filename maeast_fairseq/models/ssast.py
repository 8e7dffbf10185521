"""fairseq model ``ssast`` = :class:`maeast_fairseq.core.ssast.Ssast` + the fairseq shell."""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass

from ..core.ssast import Ssast, SsastConfig
from .shell import FairseqShell, register_ours


@dataclass
class SsastModelConfig(FairseqDataclass, SsastConfig):
    pass


@register_ours("ssast", dataclass=SsastModelConfig)
class SsastModel(Ssast, FairseqShell):
    pass
