"""The one registry of the core models: registered name (a checkpoint's ``cfg.model._name``) -> (core class, its
config dataclass). Everything that builds a core model by name (checkpoint loading, fine-tuning, export, the CLIs)
reads it; each class declares the facts of its method (:class:`~maeast_fairseq.core.base.CoreModel`)."""
from typing import Dict, Tuple, Type

from .base import CoreModel
from .eat import Eat, EatConfig
from .mae_ast import MaeAst, MaeAstConfig
from .ssast import Ssast, SsastConfig

CORE_MODELS: Dict[str, Tuple[Type[CoreModel], type]] = {
    "mae_ast": (MaeAst, MaeAstConfig),
    "ssast": (Ssast, SsastConfig),
    "eat": (Eat, EatConfig),
}
