"""Many runs at once: members (seeds × hyperparameters) on a vmapped axis.

- :mod:`~fnn.sweeps.members` — the grid × seeds, and the configuration's checks;
- :mod:`~fnn.sweeps.grid_sweep` — ``sweep``: every member to the end, with compaction and
  successive halving;
- :mod:`~fnn.sweeps.population` — members' runs carried between compiled calls;
- :mod:`~fnn.sweeps.successive_halving` — the successive-halving schedule;
- :mod:`~fnn.sweeps.population_based` — population-based training, one compiled program;
- :mod:`~fnn.sweeps.range_test` — ``lr_range``: the learning-rate range test, one program;
- :mod:`~fnn.sweeps.ensembles` — ``ensemble``: each grid point's seeds averaged into one model;
- :mod:`~fnn.sweeps.table` — ``SweepResult``, the result as a table.
"""

from fnn.sweeps.ensembles import ensemble
from fnn.sweeps.grid_sweep import sweep
from fnn.sweeps.members import check_configurations, grid_points, members
from fnn.sweeps.population_based import PBTResult, pbt
from fnn.sweeps.range_test import LRRangeResult, lr_range
from fnn.sweeps.successive_halving import Halving, halving
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
