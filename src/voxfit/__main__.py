"""``python -m voxfit`` is the ``voxfit`` command."""

from .cli import program

program()
