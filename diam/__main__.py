"""``python -m diam`` is the ``diam`` command."""

from diam.cli import main

main()
