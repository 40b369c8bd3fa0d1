"""The anomaly job: its API (:mod:`~imageae.anomaly.api`: ``AnomalyDetector``, ``score_folder``),
training recipe (:mod:`~imageae.anomaly.train`) and subcommands (:mod:`~imageae.anomaly.cli`).
"""
