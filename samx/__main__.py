"""``python -m samx`` is the ``samx`` command."""

from samx.cli import program

program()
