"""``python -m voxfit`` is the ``voxfit`` command."""

from ._program import program

program()
