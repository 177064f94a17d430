"""The Gramian methods, one module each: its solver, its rule and its preset.

``mgda``, ``upgrad``, ``dualproj``, ``imtl_g``, ``aligned_mtl``, ``cagrad``, ``pcgrad``,
``gradvac``, ``config``, ``nash_mtl``, ``fairgrad`` and ``pcd`` each hold ``<method>_from_gramian``
(public as ``ao.gramian.<method>``, whose docstring holds the method's mathematics and
references),
``<method>_rule`` and the preset ``<method>_weights``; ``m_config`` holds M-ConFIG, a
gradient transformation built on ``config``'s solver; ``_shared`` holds what several methods
use (normalization, the dual-cone QP, the spectrum, the rule adapter, validation) and the
conventions common to all. The solvers are re-exported here under their full names;
``adaptive_optax.gramian`` gives them their public, short ones.
"""

from adaptive_optax._src.balancers.gramian.aligned_mtl import (
    aligned_mtl_from_gramian as aligned_mtl_from_gramian,
)
from adaptive_optax._src.balancers.gramian.cagrad import cagrad_from_gramian as cagrad_from_gramian
from adaptive_optax._src.balancers.gramian.config import config_from_gramian as config_from_gramian
from adaptive_optax._src.balancers.gramian.dualproj import (
    dualproj_from_gramian as dualproj_from_gramian,
)
from adaptive_optax._src.balancers.gramian.fairgrad import (
    fairgrad_from_gramian as fairgrad_from_gramian,
)
from adaptive_optax._src.balancers.gramian.gradvac import (
    gradvac_from_gramian as gradvac_from_gramian,
)
from adaptive_optax._src.balancers.gramian.imtl_g import imtl_g_from_gramian as imtl_g_from_gramian
from adaptive_optax._src.balancers.gramian.mgda import mgda_from_gramian as mgda_from_gramian
from adaptive_optax._src.balancers.gramian.nash_mtl import (
    nash_mtl_from_gramian as nash_mtl_from_gramian,
)
from adaptive_optax._src.balancers.gramian.pcd import pcd_from_gramian as pcd_from_gramian
from adaptive_optax._src.balancers.gramian.pcgrad import pcgrad_from_gramian as pcgrad_from_gramian
from adaptive_optax._src.balancers.gramian.upgrad import upgrad_from_gramian as upgrad_from_gramian
