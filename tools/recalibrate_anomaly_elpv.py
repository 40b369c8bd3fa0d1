#!/usr/bin/env python
"""python tools/recalibrate_anomaly_elpv.py SCORING (from the checkout root): re-calibrate the shipped
anomaly-elpv with another scoring, weights unchanged: the calibration
step of imageae.anomaly.train.fit_autoencoder (the same images, resize, split and calibrate call),
on the model the recipe wrote. `imageae train anomaly --resume` refuses a finished run."""
import json
import os
import sys
from pathlib import Path

import keras
import numpy as np

import imageae.models.autoencoder  # noqa: F401
from imageae.anomaly.scoring import calibrate, to_model_input
from imageae.training import _split_for_validation, load_training_images

scoring, path = sys.argv[1], "saved_models/anomaly-elpv.keras"
card = json.loads(Path("saved_models/anomaly-elpv.json").read_text())
cfg = card["training"]["config"]
model = keras.saving.load_model(path)
old = model.calibration
images = load_training_images(cfg["data"], cfg["channels"])
x = np.stack([to_model_input(i, cfg["size"], cfg["channels"]) for i in images])
train_order, val_order = _split_for_validation(len(x), cfg["validation_fraction"], cfg["seed"])
cal = calibrate(model, x[train_order], x[val_order], scoring=scoring, false_positive_rate=cfg["false_positive_rate"])
cal["source_side"] = old["source_side"]
model.calibration = cal
model.save(".anomaly-elpv.partial.keras"); os.replace(".anomaly-elpv.partial.keras", path)
card["architecture"]["calibration"] = json.loads(json.dumps(cal))
card["calibration"] = {k: v for k, v in cal.items() if k not in ("latent", "pixel_error")}
card["training"]["config"]["scoring"] = scoring
Path("saved_models/anomaly-elpv.json").write_text(json.dumps(card, indent=2) + "\n")
print("recalibrated", scoring, "threshold", cal["threshold"], "validation images", cal["validation_images"])
