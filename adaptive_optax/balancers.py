"""The published loss-balancing methods, each a rule and a preset (``ao.balancers.dwa_weights``).

As ``optax.contrib`` beside optax's core: the methods of the literature, kept apart from the
library's own controller (``ao.stable_weights``) and guards (``ao.guarded``). Every name here is
also available at the top level (``ao.dwa_weights``). A ``*_rule`` proposes weights, for
:func:`adaptive_optax.guarded`; a ``*_weights`` preset runs it bare by default and takes any
guard as a keyword; :data:`RECOMMENDED` holds the guards recommended for each preset. The
convention every preset follows: the balancers guide (``docs/guides/balancers.md``).
:func:`m_config` (M-ConFIG) is a gradient transformation instead, fed one term's gradient
per step.

Examples:
  >>> import adaptive_optax as ao
  >>> weighting = ao.balancers.dwa_weights({"a": 1.0, "b": 1.0}, **ao.RECOMMENDED["dwa"])
  >>> ao.balancers.dwa_weights is ao.dwa_weights
  True
"""

from adaptive_optax._src.balancers.annealing import lr_annealing_rule as lr_annealing_rule
from adaptive_optax._src.balancers.annealing import lr_annealing_weights as lr_annealing_weights
from adaptive_optax._src.balancers.dwa import dwa_rule as dwa_rule
from adaptive_optax._src.balancers.dwa import dwa_weights as dwa_weights
from adaptive_optax._src.balancers.encodec import encodec_rule as encodec_rule
from adaptive_optax._src.balancers.encodec import encodec_weights as encodec_weights
from adaptive_optax._src.balancers.famo import famo_rule as famo_rule
from adaptive_optax._src.balancers.famo import famo_weights as famo_weights
from adaptive_optax._src.balancers.gls import gls_rule as gls_rule
from adaptive_optax._src.balancers.gls import gls_weights as gls_weights
from adaptive_optax._src.balancers.gradnorm import gradnorm_rule as gradnorm_rule
from adaptive_optax._src.balancers.gradnorm import gradnorm_weights as gradnorm_weights
from adaptive_optax._src.balancers.gramian.aligned_mtl import aligned_mtl_rule as aligned_mtl_rule
from adaptive_optax._src.balancers.gramian.aligned_mtl import (
    aligned_mtl_weights as aligned_mtl_weights,
)
from adaptive_optax._src.balancers.gramian.cagrad import cagrad_rule as cagrad_rule
from adaptive_optax._src.balancers.gramian.cagrad import cagrad_weights as cagrad_weights
from adaptive_optax._src.balancers.gramian.config import config_rule as config_rule
from adaptive_optax._src.balancers.gramian.config import config_weights as config_weights
from adaptive_optax._src.balancers.gramian.dualproj import dualproj_rule as dualproj_rule
from adaptive_optax._src.balancers.gramian.dualproj import dualproj_weights as dualproj_weights
from adaptive_optax._src.balancers.gramian.fairgrad import fairgrad_rule as fairgrad_rule
from adaptive_optax._src.balancers.gramian.fairgrad import fairgrad_weights as fairgrad_weights
from adaptive_optax._src.balancers.gramian.gradvac import gradvac_rule as gradvac_rule
from adaptive_optax._src.balancers.gramian.gradvac import gradvac_weights as gradvac_weights
from adaptive_optax._src.balancers.gramian.imtl_g import imtl_g_rule as imtl_g_rule
from adaptive_optax._src.balancers.gramian.imtl_g import imtl_g_weights as imtl_g_weights
from adaptive_optax._src.balancers.gramian.m_config import MConfigState as MConfigState
from adaptive_optax._src.balancers.gramian.m_config import m_config as m_config
from adaptive_optax._src.balancers.gramian.mgda import mgda_rule as mgda_rule
from adaptive_optax._src.balancers.gramian.mgda import mgda_weights as mgda_weights
from adaptive_optax._src.balancers.gramian.nash_mtl import nash_mtl_rule as nash_mtl_rule
from adaptive_optax._src.balancers.gramian.nash_mtl import nash_mtl_weights as nash_mtl_weights
from adaptive_optax._src.balancers.gramian.pcd import PCDState as PCDState
from adaptive_optax._src.balancers.gramian.pcd import pcd_rule as pcd_rule
from adaptive_optax._src.balancers.gramian.pcd import pcd_weights as pcd_weights
from adaptive_optax._src.balancers.gramian.pcgrad import pcgrad_rule as pcgrad_rule
from adaptive_optax._src.balancers.gramian.pcgrad import pcgrad_weights as pcgrad_weights
from adaptive_optax._src.balancers.gramian.upgrad import upgrad_rule as upgrad_rule
from adaptive_optax._src.balancers.gramian.upgrad import upgrad_weights as upgrad_weights
from adaptive_optax._src.balancers.imtl_l import imtl_l_rule as imtl_l_rule
from adaptive_optax._src.balancers.imtl_l import imtl_l_weights as imtl_l_weights
from adaptive_optax._src.balancers.metabalance import metabalance_rule as metabalance_rule
from adaptive_optax._src.balancers.metabalance import metabalance_weights as metabalance_weights
from adaptive_optax._src.balancers.normalized import base_rule as base_rule
from adaptive_optax._src.balancers.normalized import normalized_weights as normalized_weights
from adaptive_optax._src.balancers.recommended import RECOMMENDED as RECOMMENDED
from adaptive_optax._src.balancers.relobralo import relobralo_rule as relobralo_rule
from adaptive_optax._src.balancers.relobralo import relobralo_weights as relobralo_weights
from adaptive_optax._src.balancers.rlw import rlw_rule as rlw_rule
from adaptive_optax._src.balancers.rlw import rlw_weights as rlw_weights
from adaptive_optax._src.balancers.softadapt import softadapt_rule as softadapt_rule
from adaptive_optax._src.balancers.softadapt import softadapt_weights as softadapt_weights
from adaptive_optax._src.balancers.stch import stch_rule as stch_rule
from adaptive_optax._src.balancers.stch import stch_weights as stch_weights
from adaptive_optax._src.balancers.uncertainty import uncertainty_rule as uncertainty_rule
from adaptive_optax._src.balancers.uncertainty import uncertainty_weights as uncertainty_weights
from adaptive_optax._src.balancers.uw_so import uw_so_rule as uw_so_rule
from adaptive_optax._src.balancers.uw_so import uw_so_weights as uw_so_weights

__all__ = (
    "MConfigState",
    "PCDState",
    "RECOMMENDED",
    "aligned_mtl_rule",
    "aligned_mtl_weights",
    "base_rule",
    "cagrad_rule",
    "cagrad_weights",
    "config_rule",
    "config_weights",
    "dualproj_rule",
    "dualproj_weights",
    "dwa_rule",
    "dwa_weights",
    "encodec_rule",
    "encodec_weights",
    "fairgrad_rule",
    "fairgrad_weights",
    "famo_rule",
    "famo_weights",
    "gls_rule",
    "gls_weights",
    "gradnorm_rule",
    "gradnorm_weights",
    "gradvac_rule",
    "gradvac_weights",
    "imtl_g_rule",
    "imtl_g_weights",
    "imtl_l_rule",
    "imtl_l_weights",
    "lr_annealing_rule",
    "lr_annealing_weights",
    "m_config",
    "metabalance_rule",
    "metabalance_weights",
    "mgda_rule",
    "mgda_weights",
    "nash_mtl_rule",
    "nash_mtl_weights",
    "normalized_weights",
    "pcd_rule",
    "pcd_weights",
    "pcgrad_rule",
    "pcgrad_weights",
    "relobralo_rule",
    "relobralo_weights",
    "rlw_rule",
    "rlw_weights",
    "softadapt_rule",
    "softadapt_weights",
    "stch_rule",
    "stch_weights",
    "uncertainty_rule",
    "uncertainty_weights",
    "upgrad_rule",
    "upgrad_weights",
    "uw_so_rule",
    "uw_so_weights",
)
