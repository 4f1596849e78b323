"""Many runs at once: members (seeds × hyperparameters) on a vmapped axis.

- :mod:`~fnn.sweeps.members` — the grid × seeds, and the configuration's checks;
- :mod:`~fnn.sweeps.program` — ``sweep``: every member to the end, with compaction and
  successive halving;
- :mod:`~fnn.sweeps.population` — members' runs carried between compiled calls;
- :mod:`~fnn.sweeps.halving` — the successive-halving schedule;
- :mod:`~fnn.sweeps.pbt` — population-based training, one compiled program;
- :mod:`~fnn.sweeps.lr_range` — ``lr_range``: the learning-rate range test, one program;
- :mod:`~fnn.sweeps.ensemble` — ``ensemble``: each grid point's seeds averaged into one model;
- :mod:`~fnn.sweeps.table` — ``SweepResult``, the result as a table.
"""

from fnn.sweeps.ensemble import ensemble
from fnn.sweeps.halving import Halving, halving
from fnn.sweeps.lr_range import LRRangeResult, lr_range
from fnn.sweeps.members import check_configurations, grid_points, members
from fnn.sweeps.pbt import PBTResult, pbt
from fnn.sweeps.program import sweep
from fnn.sweeps.table import SweepResult

__all__ = [
    "check_configurations",
    "ensemble",
    "grid_points",
    "Halving",
    "halving",
    "lr_range",
    "LRRangeResult",
    "members",
    "pbt",
    "PBTResult",
    "sweep",
    "SweepResult",
]
