"""Selecting training data: confidence filters for generated samples and weighted coresets.

Every selector is scikit-learn style: ``fit(...)`` on plain tensors (CPU or CUDA; NumPy arrays accepted),
then ``select()`` returns ``(indices, weights)``, a LongTensor of rows and a float32 tensor of
per-example loss weights (``PseudoLabeler`` also returns the labels).

- :class:`EntropyFilter`   keep generated samples the classifier is confident about (entropy / logsumexp)
- :class:`PseudoLabeler`   label unlabelled data with a classifier, keep the confident part
- :class:`Craig`           facility-location coreset on last-layer gradients (Mirzasoleiman et al. 2020)
- :class:`AdaCore`         the same on Hessian-preconditioned gradients (Pooladzandi et al. 2022)
- :class:`RandomSelector`  uniform baseline with the same budgets and weighting
- :func:`facility_location` the chunked lazy / stochastic greedy underneath Craig and AdaCore
"""

from genlib.select.adacore import (
    AdaCore,
    cross_entropy_gradient,
    cross_entropy_hessian_diagonal,
    hutchinson_diagonal,
    last_layer_loss,
)
from genlib.select.baselines import RandomSelector
from genlib.select.craig import Craig, logit_gradients
from genlib.select.entropy import EntropyFilter, PseudoLabeler, confidence_scores
from genlib.select.facility import (
    FacilityLocationResult,
    facility_location,
    facility_location_objective,
    max_distance_bound,
    pairwise_distances,
)

__all__ = [
    "EntropyFilter",
    "PseudoLabeler",
    "confidence_scores",
    "Craig",
    "logit_gradients",
    "AdaCore",
    "hutchinson_diagonal",
    "cross_entropy_gradient",
    "cross_entropy_hessian_diagonal",
    "last_layer_loss",
    "RandomSelector",
    "FacilityLocationResult",
    "facility_location",
    "facility_location_objective",
    "max_distance_bound",
    "pairwise_distances",
]
