"""The ``diam`` command line, the settings object and the local stack launcher.

This room may import every other room; no other room imports it.
"""

from diam.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
