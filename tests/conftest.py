"""Test-wide settings: hypothesis without per-example deadlines (CI machines are shared and a
slow first example is not a failure), and a fixed example budget so runs stay short."""

from hypothesis import settings

settings.register_profile("diam", deadline=None, max_examples=100)
settings.load_profile("diam")


import logging  # noqa: E402

import pytest  # noqa: E402

_PROJECT_LOGGERS = ("diam", "serving_cache", "snapshotter", "streams", "online_model")


@pytest.fixture(autouse=True)
def _project_log_levels():  # type: ignore[no-untyped-def]
    """Each test starts with the project's logger levels as the suite found them: a command
    run in-process (``diam serve`` sets them to its ``--log-level``) must not decide what a
    later test's ``caplog`` sees."""
    saved = {name: logging.getLogger(name).level for name in _PROJECT_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
