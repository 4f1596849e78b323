"""fnn: a functional neural-network trainer on JAX.

The training process of a neural network — initialize, forward, loss, backward
(``jax.grad``), update, repeat over mini-batches and epochs — as pure functions over
immutable pytrees, so that a whole run is one compiled program that can be ``vmap``-ed
over seeds and hyperparameters.
"""

from fnn import (
    activations,
    checkpoint,
    clipping,
    datasets,
    distributed,
    init,
    layers,
    losses,
    optimizers,
    programs,
    schedules,
    sweeps,
)
from fnn.clipping import clip_by_global_norm, clip_by_value
from fnn.data import one_hot, prepare_images, standardize, train_test_split
from fnn.fit import DivergenceError, FitResult, fit
from fnn.gradcheck import check_grads, numerical_grad
from fnn.layers import (
    Activation,
    AvgPool1D,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Function,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    MaxPool1D,
    MaxPool2D,
    Reshape,
    Residual,
    Serial,
    as_model,
    mlp,
)
from fnn.losses import (
    Loss,
    accuracy,
    binary_accuracy,
    binary_cross_entropy,
    cross_entropy,
    mse,
    weighted_mean,
)
from fnn.optimizers import Optimizer, adagrad, adam, adamw, rmsprop, sgd
from fnn.regularizers import is_weight, l1, l1_l2, l2
from fnn.sweeps import LRRangeResult, PBTResult, SweepResult, ensemble, halving, lr_range, pbt, sweep
from fnn.train import Trainer, TrainState

__version__ = "0.1.0"

__all__ = [
    "accuracy",
    "Activation",
    "activations",
    "adagrad",
    "adam",
    "adamw",
    "as_model",
    "AvgPool1D",
    "AvgPool2D",
    "BatchNorm",
    "binary_accuracy",
    "binary_cross_entropy",
    "check_grads",
    "checkpoint",
    "clipping",
    "clip_by_global_norm",
    "clip_by_value",
    "Conv1D",
    "Conv2D",
    "cross_entropy",
    "datasets",
    "Dense",
    "distributed",
    "DivergenceError",
    "Dropout",
    "ensemble",
    "fit",
    "FitResult",
    "Flatten",
    "Function",
    "GlobalAvgPool",
    "halving",
    "init",
    "is_weight",
    "l1",
    "l1_l2",
    "l2",
    "Layer",
    "LayerNorm",
    "layers",
    "Loss",
    "losses",
    "lr_range",
    "LRRangeResult",
    "MaxPool1D",
    "MaxPool2D",
    "mlp",
    "mse",
    "numerical_grad",
    "one_hot",
    "Optimizer",
    "optimizers",
    "programs",
    "pbt",
    "PBTResult",
    "prepare_images",
    "Reshape",
    "Residual",
    "rmsprop",
    "schedules",
    "Serial",
    "sgd",
    "standardize",
    "sweep",
    "sweeps",
    "SweepResult",
    "train_test_split",
    "Trainer",
    "TrainState",
    "weighted_mean",
]
