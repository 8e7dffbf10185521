"""fairseq model ``mae_ast`` = :class:`maeast_fairseq.core.mae_ast.MaeAst` + the fairseq shell."""
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass

from ..core.mae_ast import MaeAst, MaeAstConfig
from .shell import FairseqShell, register_ours


@dataclass
class MaeAstModelConfig(FairseqDataclass, MaeAstConfig):
    pass


@register_ours("mae_ast", dataclass=MaeAstModelConfig)
class MaeAstModel(MaeAst, FairseqShell):
    pass
