"""``python -m imageae.cli``: the ``imageae`` command line."""

from imageae.cli import main_exit

main_exit()
