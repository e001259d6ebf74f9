"""Part-based 3D shapes: procedural data, part statistical shape models, part tokens (PRISM).

* :mod:`shapes.data`: procedural chairs, tables and lamps as part point sets with exact
  per-part correspondences, deterministic from a seed and cached.
* :mod:`shapes.ssm`: one whitened PCA shape model per part label.
* :mod:`shapes.tokens`: PRISM's part tokens, a Gaussian-mixture label embedding (plus an
  "empty" class) beside the part's SSM coefficients.
* :mod:`shapes.metrics`: Chamfer distance, EMD, MMD, COV and 1-NNA for point-cloud sets.
* :mod:`shapes.baselines`: global PCA over whole shapes and independent part sampling.
* :mod:`shapes.diffusion`: a permutation-equivariant set-transformer denoiser over part
  tokens, DDPM/DDIM sampling and inpainting.
"""
