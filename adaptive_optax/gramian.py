"""Pure Gramian weightings, for users who write their own aggregation (as TorchJD's weightings).

Each function maps the ``(K, K)`` Gramian ``G = J J^T`` of ``K`` gradients (the rows of ``J``)
to ``(K,)`` weights ``w``; the aggregate is ``w^T J``. All are pure and jittable, run a fixed
number of iterations in-graph, accept a ``mask`` of the terms to solve for, and give finite
weights for any input (uniform ``1/K`` for an invalid Gramian). ``gradvac`` and ``pcd`` are
stateful: each takes its state and returns ``(weights, state)`` (``pcd_init(K)`` starts
PCD's). Conventions and departures from the authors' and TorchJD's code: each function's
docstring, and the shared conventions in :mod:`adaptive_optax._src.balancers.gramian._shared`.

Examples:
  >>> import jax.numpy as jnp
  >>> import adaptive_optax as ao
  >>> J = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  >>> [round(float(w), 4) for w in ao.gramian.upgrad(J @ J.T)]  # TorchJD: 1.1109, 0.7894
  [1.1109, 0.7894]
"""

from adaptive_optax._src.balancers.gramian.aligned_mtl import (
    aligned_mtl_from_gramian as aligned_mtl,
)
from adaptive_optax._src.balancers.gramian.cagrad import cagrad_from_gramian as cagrad
from adaptive_optax._src.balancers.gramian.config import config_from_gramian as config
from adaptive_optax._src.balancers.gramian.dualproj import dualproj_from_gramian as dualproj
from adaptive_optax._src.balancers.gramian.fairgrad import fairgrad_from_gramian as fairgrad
from adaptive_optax._src.balancers.gramian.gradvac import gradvac_from_gramian as gradvac
from adaptive_optax._src.balancers.gramian.imtl_g import imtl_g_from_gramian as imtl_g
from adaptive_optax._src.balancers.gramian.mgda import mgda_from_gramian as mgda
from adaptive_optax._src.balancers.gramian.nash_mtl import nash_mtl_from_gramian as nash_mtl
from adaptive_optax._src.balancers.gramian.pcd import pcd_from_gramian as pcd
from adaptive_optax._src.balancers.gramian.pcd import pcd_init as pcd_init
from adaptive_optax._src.balancers.gramian.pcgrad import pcgrad_from_gramian as pcgrad
from adaptive_optax._src.balancers.gramian.upgrad import upgrad_from_gramian as upgrad

__all__ = (
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "fairgrad",
    "gradvac",
    "imtl_g",
    "mgda",
    "nash_mtl",
    "pcd",
    "pcd_init",
    "pcgrad",
    "upgrad",
)
