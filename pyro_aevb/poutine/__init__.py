"""The ground floor for any Pyro program with a data plate: plate helpers, the minibatch
(``N / M``) contract, the layout of a model's local latents, a model/guide pair prepared for
per-datapoint estimators, and the parameters a pair of programs trains.

Nothing here knows about VAEs, estimators or trainers; everything above builds on it.
"""

from .auxiliary import (
    UNCONSTRAINED_OF,
    ConditionAuxiliary,
    guide_auxiliary_sites,
    is_auxiliary,
)
from .layout import LatentLayout, LatentSite
from .params import ProgramParams, collect_params, owner_modules
from .plates import (
    latent_sites,
    max_plate_nesting,
    plate_frame,
    require_plate,
    sample_sites,
    sum_to_plate,
)
from .program import (
    DataPlateRows,
    PerDatapointProgram,
    as_program,
    global_point_estimate,
    replicate_rows,
    trace_guide_and_model,
)
from .scaling import DataPlateScale, accepts_num_data, bind_num_data, check_minibatch_trace
from .training import TrainingProgram
from .unconstrained import UnconstrainedCondition, constrain_in_model, flatten_in_model

__all__ = [
    "plate_frame",
    "sum_to_plate",
    "sample_sites",
    "latent_sites",
    "max_plate_nesting",
    "require_plate",
    "DataPlateScale",
    "accepts_num_data",
    "bind_num_data",
    "check_minibatch_trace",
    "DataPlateRows",
    "PerDatapointProgram",
    "as_program",
    "global_point_estimate",
    "replicate_rows",
    "trace_guide_and_model",
    "LatentSite",
    "LatentLayout",
    "TrainingProgram",
    "ProgramParams",
    "collect_params",
    "owner_modules",
    "UNCONSTRAINED_OF",
    "ConditionAuxiliary",
    "guide_auxiliary_sites",
    "is_auxiliary",
    "UnconstrainedCondition",
    "constrain_in_model",
    "flatten_in_model",
]
