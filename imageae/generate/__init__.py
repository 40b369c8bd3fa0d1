"""The generate job: VAE sampling (:mod:`~imageae.generate.sampling`), its API
(:mod:`~imageae.generate.api`), training recipes (:mod:`~imageae.generate.train`), subcommands
(:mod:`~imageae.generate.cli`) and serving signatures (:mod:`~imageae.generate.export`).

``imageae.generate`` itself is the function :func:`imageae.generate.api.generate` (re-exported by
:mod:`imageae`); import this package's modules with ``from imageae.generate import api``.
"""
