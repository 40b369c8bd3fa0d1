#!/usr/bin/env python
"""python tools/recalibrate_anomaly_elpv.py SCORING (from the checkout root): re-score the shipped
anomaly-elpv with another scoring, weights unchanged, through the recipe's own calibration step
(:func:`imageae.anomaly.train.recalibrate`: the same training cells, resize and split as
``imageae train anomaly``, whose ``--resume`` refuses a finished run); the card follows."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import keras

import imageae.models.autoencoder  # noqa: F401  (registers ConvAutoencoder)
from imageae.anomaly.train import AnomalyTrainConfig, recalibrate
from imageae.training import load_training_images

scoring, path = sys.argv[1], Path("saved_models/anomaly-elpv.keras")
card_path = path.with_suffix(".json")
card = json.loads(card_path.read_text())
fields = {f.name for f in dataclasses.fields(AnomalyTrainConfig)}
config = AnomalyTrainConfig(**{k: v for k, v in card["training"]["config"].items() if k in fields})
config = dataclasses.replace(config, scoring=scoring, filters=tuple(config.filters))
model = keras.saving.load_model(path)
cal = recalibrate(model, load_training_images(config.data, config.channels), config)
partial = path.with_name(".anomaly-elpv.partial.keras")
model.save(partial)
os.replace(partial, path)
card["architecture"]["calibration"] = json.loads(json.dumps(cal))
card["calibration"] = {k: v for k, v in cal.items() if k not in ("latent", "pixel_error")}
card["training"]["config"]["scoring"] = scoring
card_path.write_text(json.dumps(card, indent=2) + "\n")
print(f"re-scored {path} with {scoring}: threshold {cal['threshold']:.4f} on {cal['validation_images']} held-out cells")
