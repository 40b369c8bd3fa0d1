"""The README's before/after picture: a noisy crop of a sample photo, imageae, BM3D, the original.

    python benchmarks/example_figure.py        # writes benchmarks/results/denoise_example.png

Uses data/clean/coffee.png (CC0), white Gaussian noise sigma 25 with a fixed seed, unclipped
as in the benchmark protocol; PSNRs are printed on the panels.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import imageae
    from imageae.metrics import psnr

    clean = np.asarray(Image.open(ROOT / "data" / "clean" / "coffee.png").convert("RGB"))[60:316, 180:436]
    sigma = 25
    noisy = clean + np.random.default_rng(2026).normal(0, sigma, clean.shape)
    panels = [("noisy, sigma 25", np.clip(np.round(noisy), 0, 255).astype(np.uint8))]
    out = imageae.denoise((noisy / 255).astype(np.float32))
    panels.append(("imageae", np.round(out * 255).astype(np.uint8)))
    try:
        import bm3d

        y = bm3d.bm3d_rgb(noisy / 255.0, sigma / 255.0)
        panels.append(("CBM3D", np.clip(np.round(y * 255), 0, 255).astype(np.uint8)))
    except ImportError:
        print("bm3d not installed: the BM3D panel is left out", file=sys.stderr)
    panels.append(("original", clean))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, image) in zip(axes, panels):
        ax.imshow(image)
        label = name if image is clean else f"{name}: {psnr(clean, image):.2f} dB"
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    path = ROOT / "benchmarks" / "results" / "denoise_example.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
