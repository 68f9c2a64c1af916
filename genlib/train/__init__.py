"""Training utilities: one engine for every trainer, weighted classifier training, downstream classifiers,
checkpoints, metric logs.

- :class:`Engine`: step / evaluate / checkpoint / resume / log for any loss; mixed precision, torch.compile,
  DDP under ``torchrun``; :class:`StepBatches` / :func:`step_loader`: batches as a function of the step,
  read through a DataLoader (any world size sees the same global batches)
- :func:`train_classifier` / :func:`evaluate_accuracy`: per-example weighted cross-entropy with any
  ``torch.optim`` or ``genlib.optim`` optimizer (a factory), tqdm progress, optional checkpoint/resume
- :class:`MLPClassifier`, :class:`SmallConvNet`: the downstream models of the augmentation experiments
- :class:`Checkpointer`: atomic periodic checkpoints of models, optimizers and RNG states; exact resume
- :class:`MetricsLogger`: JSON-lines + CSV metric records next to a run's results
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genlib._lazy import lazy_attributes
from genlib.train.batches import StepBatches, step_loader
from genlib.train.checkpoint import Checkpointer, Resumed, get_rng_state, set_rng_state
from genlib.train.classifiers import MLPClassifier, SmallConvNet
from genlib.train.classify import evaluate_accuracy, predict_logits, train_classifier, weighted_cross_entropy
from genlib.train.distributed import DistributedContext, init_distributed
from genlib.train.engine import Engine, needs_closure
from genlib.train.logger import MetricsLogger, read_jsonl

__all__ = [
    "Engine",
    "needs_closure",
    "StepBatches",
    "step_loader",
    "DistributedContext",
    "init_distributed",
    "Checkpointer",
    "Resumed",
    "get_rng_state",
    "set_rng_state",
    "MLPClassifier",
    "SmallConvNet",
    "train_classifier",
    "evaluate_accuracy",
    "predict_logits",
    "weighted_cross_entropy",
    "MetricsLogger",
    "read_jsonl",
]

from genlib.train.augment import (  # noqa: E402
    AugmentConfig,
    Generated,
    Selection,
    generate_labelled,
    latent_logits,
    pseudo_label,
    select_synthetic,
)
from genlib.train.semisup import SemiSupervisedConfig, SemiSupervisedTrainer, latent_accuracy  # noqa: E402

__all__ += ["SemiSupervisedConfig", "SemiSupervisedTrainer", "latent_accuracy", "AugmentConfig", "Generated",
            "Selection", "generate_labelled", "latent_logits", "pseudo_label", "select_synthetic"]

if TYPE_CHECKING:
    from genlib.train.quality import (
        GenerationReport,
        aggregate_posterior_samples,
        evaluate_generation,
        fit_reference_classifier,
        judge_generation,
        latent_frechet_distance,
        reconstruct_images,
        save_generation_grids,
    )

# The generation-quality helpers pull in the image metrics (and through them torchaudio, for FAD): imported on
# first use of one of their names (PEP 562).
_LAZY = dict.fromkeys(
    ["GenerationReport", "aggregate_posterior_samples", "evaluate_generation", "fit_reference_classifier",
     "judge_generation", "latent_frechet_distance", "reconstruct_images", "save_generation_grids"],
    "genlib.train.quality",
)
__all__ += ["GenerationReport", "aggregate_posterior_samples", "evaluate_generation",
            "fit_reference_classifier", "judge_generation", "latent_frechet_distance", "reconstruct_images",
            "save_generation_grids"]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
