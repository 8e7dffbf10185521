"""fairseq model ``maeast_classifier`` = :class:`maeast_fairseq.core.classifier.AudioClassifier` + the fairseq shell.

``model.model_path`` names a pretrained checkpoint of any of the three methods (or a ``maeast_classifier``
checkpoint, whose encoder is reused with a new head). Building the model reads it with ``torch.load(weights_only)``,
builds the core encoder registered under the checkpoint's ``cfg.model._name`` (``CORE_MODELS``), loads its weights
strictly (a mismatch lists the missing / unexpected keys), drops the pretraining-only modules (decoder, heads,
EAT's teacher) and stores the encoder's name and config in ``model.encoder_name`` / ``model.encoder_cfg``: the
fine-tuned checkpoint is then self-contained (``maeast-predict`` and fairseq's own loaders rebuild it without the
pretrained checkpoint or the data).

Layer-wise lr decay and the ``no_decay`` group are per-parameter tags for fairseq's ``composite`` optimizer
(``dynamic_groups: true``); the task refuses an optimizer that would ignore them.
"""
import logging
from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel

from ..checkpoint import build_core, classifier_from_pretrained, read_checkpoint
from ..core.classifier import AudioClassifier, ClassifierConfig, prepare_encoder, tag_parameters
from .shell import check_state_dict, register_ours

logger = logging.getLogger(__name__)


@dataclass
class ClassifierModelConfig(FairseqDataclass, ClassifierConfig):
    pass


@register_ours("maeast_classifier", dataclass=ClassifierModelConfig)
class ClassifierModel(AudioClassifier, BaseFairseqModel):
    @classmethod
    def build_model(cls, cfg: ClassifierModelConfig, task=None):
        if cfg.encoder_cfg is not None and cfg.encoder_name:
            # rebuilding a fine-tuned model (fairseq's checkpoint loaders): the weights come from that checkpoint
            model = cls(cfg, prepare_encoder(build_core(cfg.encoder_name, dict(cfg.encoder_cfg)), cfg))
        else:
            if not cfg.model_path:
                raise ValueError("model.model_path is empty: set it to a pretrained checkpoint (mae_ast, ssast, eat)")
            state = read_checkpoint(cfg.model_path)
            # classifier_from_pretrained fills cfg.encoder_name / encoder_cfg: they are saved with the checkpoint
            model = classifier_from_pretrained(cfg, state, cfg.model_path, model_cls=cls)
            del state
        counts = tag_parameters(model, model.lr_scales(), cfg.no_decay_group)
        if cfg.layer_decay != 1.0 or cfg.no_decay_group:
            logger.info(f"optimizer groups (group x lr scale: tensors): {counts}")
        return model

    def max_positions(self):
        return None

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's load, after :func:`~maeast_fairseq.models.shell.check_state_dict` (a pretraining checkpoint
        given as ``checkpoint.restore_file`` instead of ``model.model_path`` is named as such) when ``strict``."""
        if strict:
            check_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
