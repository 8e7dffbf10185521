"""fairseq model ``ssast`` = :class:`maeast_fairseq.core.ssast.Ssast` + the fairseq shell."""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model

from ..core.ssast import Ssast, SsastConfig
from .shell import FairseqShell


@dataclass
class SsastModelConfig(FairseqDataclass, SsastConfig):
    pass


@register_model("ssast", dataclass=SsastModelConfig)
class SsastModel(Ssast, FairseqShell):
    pass
