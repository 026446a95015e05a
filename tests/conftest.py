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
    """Each test starts with the project's logger levels and filters as the suite found them:
    a command run in-process (``diam serve`` sets the levels to its ``--log-level``; ``diam
    run`` puts a once-a-minute filter on ``snapshotter.store``'s lines) must not decide what a
    later test's ``caplog`` sees."""
    saved = {name: logging.getLogger(name).level for name in _PROJECT_LOGGERS}
    filters = {name: list(lg.filters) for name, lg in logging.root.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and name.split(".")[0] in _PROJECT_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger) and name.split(".")[0] in _PROJECT_LOGGERS:
            lg.filters[:] = filters.get(name, [])
