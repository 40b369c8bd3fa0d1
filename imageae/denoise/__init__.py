"""The denoise job: its API (:mod:`~imageae.denoise.api`), training recipe (:mod:`~imageae.denoise.train`),
subcommands (:mod:`~imageae.denoise.cli`) and serving signatures (:mod:`~imageae.denoise.export`).

``imageae.denoise`` itself is the function :func:`imageae.denoise.api.denoise` (re-exported by
:mod:`imageae`); import this package's modules with ``from imageae.denoise import api``.
"""
