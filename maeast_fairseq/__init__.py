"""maeast-fairseq: self-supervised audio spectrogram transformers (MAE-AST, EAT, SSAST) as one fairseq plugin.

The pure-torch core (``maeast_fairseq.audio``, ``.fbank``, ``.frontend``, ``.core``) imports nothing from fairseq.
The fairseq shell (``.tasks``, ``.models``, ``.criterions``, ``.data.fbank_dataset``) is registered when this package
is loaded as a fairseq user dir (``--user-dir maeast_fairseq`` / ``common.user_dir=...``), or explicitly with
:func:`register`.
"""
import sys

__version__ = "0.1.0"


def register() -> None:
    """Import the fairseq task / model / criterion modules so their names get registered (imports fairseq), and
    install :mod:`maeast_fairseq.fairseq_compat` (multi-rank resume under weights_only loading, atomic checkpoint
    copies)."""
    from . import fairseq_compat
    from .criterions import classification as _classification_criterion  # noqa: F401
    from .criterions import eat_ufo, masked_recon_nce  # noqa: F401
    from .models import classifier, eat, mae_ast, ssast  # noqa: F401
    from .optim import plateau, torch_adamw  # noqa: F401
    from .tasks import classification as _classification_task  # noqa: F401
    from .tasks import pretraining  # noqa: F401

    fairseq_compat.install()
    quiet_hydra_deprecations()


def quiet_hydra_deprecations() -> None:
    """Silence the hydra deprecation warnings fairseq 0.12's own use of hydra prints (its ``compose`` in the
    argparse path of fairseq-train / fairseq-validate: experimental API, version_base, package header, schema
    matching, strict flag). Nothing of ours triggers them; the yamls of examples/ set ``hydra.job.chdir`` and no
    ``# @package`` header, so they add none."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, message=(
        r"(?s).*(no longer experimental|version_base parameter is not specified|deprecated keyword in package "
        r"header|validated against ConfigStore schema|strict flag in the compose API)"))


# fairseq's import_user_module imports this package after fairseq itself: register then. A process that never
# imported fairseq (the embedding API, the tests of the core) does not pay for it and never imports it.
if sys.modules.get("fairseq") is not None:
    register()
