"""PRISM vs global PCA vs independent parts (see ``sweeps/configs/prism.py``).

Per seed ``s``: training shapes ``load(category, 'train', seed=s)``, held-out shapes
``load(category, 'test', num_samples + num_eval, seed=s)`` (the first ``num_samples`` the
held-out real sample for the structure statistics, the first ``num_eval`` of those the
validation references, the last ``num_eval`` the test references the claims use), one
part SSM per label fitted on the training shapes, and three generators:

* ``prism``: the token diffusion model (:mod:`shapes.diffusion`) trained on the training
  shapes' tokens (fresh label noise, and slot order when ``slots='set'``, every batch),
  sampled with ancestral DDPM and decoded by :func:`shapes.tokens.decode`;
* ``global_pca`` and ``independent`` (:mod:`shapes.baselines`).

Every method draws ``num_samples`` shapes: all of them give the existence-pattern TV and
the rule violations, the first ``num_eval`` (``eval_points`` points each, normalised into
``[-1, 1]^3``) the Chamfer MMD, COV and 1-NNA against the test references (``1nna_cd``...)
and the validation references (``val_1nna_cd``...). No method has a tuning grid.

PRISM's seeds train and sample as one vmapped call of :class:`shapes.prism.Pipeline`
(a :mod:`sweeps.families` family; decoding and the metrics run on the host after it),
the two baselines as a second family whose work is all on the host. The first seed's
PRISM run also stores a gallery of generated shapes, an editing sequence (the back and
arms of a held-out chair regenerated around its kept seat and legs by inpainting) and an
interpolation, as SSM coefficients in the run's info: the report decodes and draws them.
"""

from sweeps.experiments.prism.report import report
from sweeps.experiments.prism.run import (
    EDITED,
    METHODS,
    families,
    pair_correlation,
    prepare,
    seeds,
    validate,
)

__all__ = ["EDITED", "METHODS", "families", "pair_correlation", "prepare", "report", "seeds",
           "validate"]
