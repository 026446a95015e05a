"""Test-wide settings: hypothesis without per-example deadlines (CI machines are shared and a
slow first example is not a failure), and a fixed example budget so runs stay short."""

from hypothesis import settings

settings.register_profile("diam", deadline=None, max_examples=100)
settings.load_profile("diam")
