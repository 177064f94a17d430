"""adaptive_optax: adaptive loss weights for JAX that never destabilize training.

A weighting is a pure ``(init, update)`` pair over an immutable :class:`AdaptiveState`::

    weighting = ao.stable_weights({"mel": 2.5, "stop": 1.0}, adapt=("mel",))
    state = weighting.init()
    weights, state = weighting.update(losses, state, grad_norms=grad_norm)
    total = ao.weighted_sum(losses, weights)
"""

from adaptive_optax import balancers as balancers  # the published methods: ao.balancers.dwa_weights
from adaptive_optax import gramian as gramian  # the pure solvers: ao.gramian.upgrad(G)
from adaptive_optax._src.amortized import AmortizedGrads as AmortizedGrads
from adaptive_optax._src.amortized import AmortizedState as AmortizedState
from adaptive_optax._src.amortized import amortized_grads as amortized_grads
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
from adaptive_optax._src.balancers.recommended import BARE as BARE
from adaptive_optax._src.balancers.recommended import ORIGINAL as ORIGINAL
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
from adaptive_optax._src.base import AdaptiveState as AdaptiveState
from adaptive_optax._src.base import Counters as Counters
from adaptive_optax._src.base import LogStats as LogStats
from adaptive_optax._src.base import LossWeighting as LossWeighting
from adaptive_optax._src.base import Rule as Rule
from adaptive_optax._src.base import RunningStats as RunningStats
from adaptive_optax._src.base import Signals as Signals
from adaptive_optax._src.base import SpikeStats as SpikeStats
from adaptive_optax._src.checkpoint import restore as restore
from adaptive_optax._src.combinators import every_k as every_k
from adaptive_optax._src.control import checked as checked
from adaptive_optax._src.control import disable as disable
from adaptive_optax._src.control import distill as distill
from adaptive_optax._src.control import enable as enable
from adaptive_optax._src.control import find_state as find_state
from adaptive_optax._src.control import metrics as metrics
from adaptive_optax._src.control import rollback as rollback
from adaptive_optax._src.control import weighted_sum as weighted_sum
from adaptive_optax._src.deprecated import distilled_weights as distilled_weights
from adaptive_optax._src.gradients import GRADIENT_STATISTICS as GRADIENT_STATISTICS
from adaptive_optax._src.gradients import gradient_statistics as gradient_statistics
from adaptive_optax._src.guards import RELAXED as RELAXED
from adaptive_optax._src.guards import guarded as guarded
from adaptive_optax._src.guards.away import AWAY_REASONS as AWAY_REASONS
from adaptive_optax._src.integration import WeightGradientsState as WeightGradientsState
from adaptive_optax._src.integration import apply_gradients as apply_gradients
from adaptive_optax._src.integration import apply_if_finite as apply_if_finite
from adaptive_optax._src.integration import weight_gradients as weight_gradients
from adaptive_optax._src.per_term import per_term_grads as per_term_grads
from adaptive_optax._src.precision import loss_scaled as loss_scaled
from adaptive_optax._src.representation import RepresentationGrads as RepresentationGrads
from adaptive_optax._src.representation import representation_grads as representation_grads
from adaptive_optax._src.rules import loss_ratio_rule as loss_ratio_rule
from adaptive_optax._src.rules import relative_ratio_rule as relative_ratio_rule
from adaptive_optax._src.rules import tanh_rule as tanh_rule
from adaptive_optax._src.sweeps import weight_grid as weight_grid
from adaptive_optax._src.weightings import legacy_weights as legacy_weights
from adaptive_optax._src.weightings import stable_weights as stable_weights
from adaptive_optax._src.weightings import unguarded_weights as unguarded_weights

__version__ = "0.1.0"

__all__ = (
    "AWAY_REASONS",
    "AdaptiveState",
    "AmortizedGrads",
    "AmortizedState",
    "BARE",
    "Counters",
    "GRADIENT_STATISTICS",
    "LogStats",
    "LossWeighting",
    "MConfigState",
    "ORIGINAL",
    "PCDState",
    "RECOMMENDED",
    "RELAXED",
    "RepresentationGrads",
    "Rule",
    "RunningStats",
    "Signals",
    "SpikeStats",
    "WeightGradientsState",
    "aligned_mtl_rule",
    "aligned_mtl_weights",
    "amortized_grads",
    "apply_gradients",
    "apply_if_finite",
    "base_rule",
    "cagrad_rule",
    "cagrad_weights",
    "checked",
    "config_rule",
    "config_weights",
    "disable",
    "distill",
    "distilled_weights",
    "dualproj_rule",
    "dualproj_weights",
    "dwa_rule",
    "dwa_weights",
    "enable",
    "encodec_rule",
    "encodec_weights",
    "every_k",
    "fairgrad_rule",
    "fairgrad_weights",
    "famo_rule",
    "famo_weights",
    "find_state",
    "gls_rule",
    "gls_weights",
    "gradient_statistics",
    "gradnorm_rule",
    "gradnorm_weights",
    "gradvac_rule",
    "gradvac_weights",
    "guarded",
    "imtl_g_rule",
    "imtl_g_weights",
    "imtl_l_rule",
    "imtl_l_weights",
    "legacy_weights",
    "loss_ratio_rule",
    "loss_scaled",
    "lr_annealing_rule",
    "lr_annealing_weights",
    "m_config",
    "metabalance_rule",
    "metabalance_weights",
    "metrics",
    "mgda_rule",
    "mgda_weights",
    "nash_mtl_rule",
    "nash_mtl_weights",
    "normalized_weights",
    "pcd_rule",
    "pcd_weights",
    "pcgrad_rule",
    "pcgrad_weights",
    "per_term_grads",
    "relative_ratio_rule",
    "relobralo_rule",
    "relobralo_weights",
    "representation_grads",
    "restore",
    "rlw_rule",
    "rlw_weights",
    "rollback",
    "softadapt_rule",
    "softadapt_weights",
    "stable_weights",
    "stch_rule",
    "stch_weights",
    "tanh_rule",
    "uncertainty_rule",
    "uncertainty_weights",
    "unguarded_weights",
    "upgrad_rule",
    "upgrad_weights",
    "uw_so_rule",
    "uw_so_weights",
    "weight_gradients",
    "weight_grid",
    "weighted_sum",
)
