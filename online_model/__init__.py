"""The DIAM model and baselines (torch), offline trainer and evaluation, dataset loaders,
incremental signals, the online update rule and drift guards, aggregation math (numpy).

Never imports Kafka or Redis: everything here is pure computation."""

from online_model.aggregate import aggregate, manual_d
from online_model.base import BaseView
from online_model.config import OnlineConfig
from online_model.datasets import ItemTable, PreparedDataset, load_prepared, user_sequences
from online_model.online import DriftEvent, OnlineLearner, UserState
from online_model.signals import SignalState, batch_signals

__all__ = [
    "ItemTable",
    "PreparedDataset",
    "load_prepared",
    "user_sequences",
    "OnlineConfig",
    "aggregate",
    "manual_d",
    "BaseView",
    "OnlineLearner",
    "UserState",
    "DriftEvent",
    "SignalState",
    "batch_signals",
]
