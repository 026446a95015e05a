"""Every float setting refuses NaN and inf when the settings load (``allow_inf_nan=False`` on
each settings model): was, e.g., DIAM_STACK_START_TIMEOUT_S=nan or DIAM_FLOW_EPOCH_INTERVAL_S=inf
taken as given. The sweep walks :class:`diam.settings.Settings` and every model in it."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from diam.settings import Settings


def _float_fields(model: type[BaseModel], path: str = ""):  # type: ignore[no-untyped-def]
    for name, f in model.model_fields.items():
        args = typing.get_args(f.annotation) or (f.annotation,)
        for sub in args:
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from _float_fields(sub, f"{path}{name}.")
        if float in args:
            yield model, name, f"{path}{name}"


def _takes(model: type[BaseModel], name: str, value: str) -> bool:
    try:
        model(**{name: value})
    except ValidationError:
        return False
    return True


def test_the_sweep_sees_the_float_settings() -> None:
    names = {where for _, _, where in _float_fields(Settings)}
    assert {"stack.start_timeout_s", "flow.epoch_interval_s", "retrain.gate.eps_recall",
            "snapshot.settle_s", "drift.d_swing", "online.lr", "online.rate_per_s"} <= names


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_refuses_a_non_finite_value(value: str) -> None:
    taken = {where for model, name, where in _float_fields(Settings)
             if _takes(model, name, value)}
    assert taken == set()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_redis_socket_timeout_is_above_zero(value: str) -> None:
    """DIAM_REDIS_SOCKET_TIMEOUT_S=0 or below is refused too (was taken as given)."""
    from serving_cache import RedisConfig

    assert not _takes(RedisConfig, "socket_timeout_s", value)
    assert _takes(RedisConfig, "socket_timeout_s", "0.5")
