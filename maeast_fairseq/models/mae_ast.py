"""fairseq model ``mae_ast`` = :class:`maeast_fairseq.core.mae_ast.MaeAst` + the fairseq shell."""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model

from ..core.mae_ast import MaeAst, MaeAstConfig
from .shell import FairseqShell


@dataclass
class MaeAstModelConfig(FairseqDataclass, MaeAstConfig):
    pass


@register_model("mae_ast", dataclass=MaeAstModelConfig)
class MaeAstModel(MaeAst, FairseqShell):
    pass
