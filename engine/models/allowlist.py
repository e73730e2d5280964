"""The estimators a model declaration may name, and nothing else.

A pipeline text can only construct the classes listed here, by their bare
name; there is no attribute access, import or call of anything else, so a
model file cannot run code. Parameters that size an estimator's memory are
bounded (``LIMITS``), so a model file cannot exhaust a worker either.

To offer another River class, add it here with its role and, if it
allocates per parameter, its limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from river import (
    forest,
    linear_model,
    multiclass,
    naive_bayes,
    optim,
    preprocessing,
    tree,
)

from engine.models.estimators import DaysUntilEmpty
from engine.models.hst import HalfSpaceTrees
from engine.models.scalers import MinMaxScaler


class Role(Enum):
    """Where an allowlisted class may appear in a pipeline."""

    TRANSFORMER = "transformer"  # any step but the last
    CLASSIFIER = "classifier"  # last step of a binary model
    REGRESSOR = "regressor"  # last step of a regression model
    ANOMALY = "anomaly"  # last step of an anomaly model
    COMPONENT = "component"  # only as an argument: optimizers, losses, initializers


@dataclass(frozen=True)
class Allowed:
    cls: type
    role: Role
    #: parameter name -> (min, max), checked before the class is built
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)


_TREES = {"n_trees": (1, 100), "height": (1, 12), "window_size": (1, 100_000)}
_FOREST = {"n_models": (1, 50), "n_estimators": (1, 50)}
_HOEFFDING = {"max_depth": (1, 50), "grace_period": (1, 1_000_000)}

ALLOWED: dict[str, Allowed] = {
    # transformers
    "StandardScaler": Allowed(preprocessing.StandardScaler, Role.TRANSFORMER),
    # River's MinMaxScaler, with the same state and results, faster
    "MinMaxScaler": Allowed(MinMaxScaler, Role.TRANSFORMER),
    "MaxAbsScaler": Allowed(preprocessing.MaxAbsScaler, Role.TRANSFORMER),
    "AdaptiveStandardScaler": Allowed(preprocessing.AdaptiveStandardScaler, Role.TRANSFORMER),
    "Normalizer": Allowed(preprocessing.Normalizer, Role.TRANSFORMER),
    "Binarizer": Allowed(preprocessing.Binarizer, Role.TRANSFORMER),
    # binary classifiers
    "LogisticRegression": Allowed(linear_model.LogisticRegression, Role.CLASSIFIER),
    "PAClassifier": Allowed(linear_model.PAClassifier, Role.CLASSIFIER),
    "Perceptron": Allowed(linear_model.Perceptron, Role.CLASSIFIER),
    "ALMAClassifier": Allowed(linear_model.ALMAClassifier, Role.CLASSIFIER),
    "GaussianNB": Allowed(naive_bayes.GaussianNB, Role.CLASSIFIER),
    "HoeffdingTreeClassifier": Allowed(tree.HoeffdingTreeClassifier, Role.CLASSIFIER, _HOEFFDING),
    "HoeffdingAdaptiveTreeClassifier": Allowed(
        tree.HoeffdingAdaptiveTreeClassifier, Role.CLASSIFIER, _HOEFFDING
    ),
    "ARFClassifier": Allowed(forest.ARFClassifier, Role.CLASSIFIER, _FOREST),
    "OneVsRestClassifier": Allowed(multiclass.OneVsRestClassifier, Role.CLASSIFIER),
    # regressors
    "LinearRegression": Allowed(linear_model.LinearRegression, Role.REGRESSOR),
    "PARegressor": Allowed(linear_model.PARegressor, Role.REGRESSOR),
    "BayesianLinearRegression": Allowed(linear_model.BayesianLinearRegression, Role.REGRESSOR),
    "HoeffdingTreeRegressor": Allowed(tree.HoeffdingTreeRegressor, Role.REGRESSOR, _HOEFFDING),
    "HoeffdingAdaptiveTreeRegressor": Allowed(
        tree.HoeffdingAdaptiveTreeRegressor, Role.REGRESSOR, _HOEFFDING
    ),
    "ARFRegressor": Allowed(forest.ARFRegressor, Role.REGRESSOR, _FOREST),
    "TargetStandardScaler": Allowed(preprocessing.TargetStandardScaler, Role.REGRESSOR),
    "DaysUntilEmpty": Allowed(DaysUntilEmpty, Role.REGRESSOR, {"max_days": (1e-3, 1e6)}),
    # anomaly detectors (scores in [0, 1], see docs/models.md); River's
    # HalfSpaceTrees, with the same trees and scores, computed faster
    "HalfSpaceTrees": Allowed(HalfSpaceTrees, Role.ANOMALY, _TREES),
    # components: only as arguments
    "SGD": Allowed(optim.SGD, Role.COMPONENT),
    "Adam": Allowed(optim.Adam, Role.COMPONENT),
    "AdaGrad": Allowed(optim.AdaGrad, Role.COMPONENT),
    "RMSProp": Allowed(optim.RMSProp, Role.COMPONENT),
    "FTRLProximal": Allowed(optim.FTRLProximal, Role.COMPONENT),
    "Log": Allowed(optim.losses.Log, Role.COMPONENT),
    "Hinge": Allowed(optim.losses.Hinge, Role.COMPONENT),
    "Squared": Allowed(optim.losses.Squared, Role.COMPONENT),
    "Absolute": Allowed(optim.losses.Absolute, Role.COMPONENT),
    "Huber": Allowed(optim.losses.Huber, Role.COMPONENT),
    "Zeros": Allowed(optim.initializers.Zeros, Role.COMPONENT),
    "Normal": Allowed(optim.initializers.Normal, Role.COMPONENT),
}
