"""Regenerate data/clean/ and data/samples/ from scikit-image's bundled test images.

    pip install scikit-image && python data/make_samples.py

The noisy samples carry seeded white Gaussian noise (sigma on the 0..255 scale in the name),
rounded and clipped to 8 bits as a real noisy file would be.
"""

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

HERE = Path(__file__).resolve().parent
# name: (loader, sigma, crop or None)
SAMPLES = {
    "astronaut": (skimage.data.astronaut, 25, None),
    "coffee": (skimage.data.coffee, 15, None),
    "camera": (skimage.data.camera, 25, None),
    "text": (skimage.data.text, 50, None),
}
CLEAN = ("camera", "coffee")


def main():
    for index, (name, (load, sigma, _)) in enumerate(SAMPLES.items()):
        clean = load()
        if name in CLEAN:
            Image.fromarray(clean).save(HERE / "clean" / f"{name}.png", optimize=True)
        rng = np.random.default_rng([2026, index])
        noisy = clean.astype(np.float64) + rng.normal(0.0, sigma, clean.shape)
        noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(HERE / "samples" / f"{name}-sigma{sigma}.png", optimize=True)


if __name__ == "__main__":
    main()
