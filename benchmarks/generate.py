"""Generation quality and speed of the shipped VAEs against baselines, in one run.

    python benchmarks/generate.py [--samples 10000] [--data ../shared/datasets/digits/mnist]

Digits: FID and KID in the feature space of the project's digit classifier
(saved_models/digit-classifier.keras, trained by `imageae train digit-classifier`), between
10,000 generated images and the 10,000 MNIST test images, for
  * real vs real: 10,000 training images (the floor),
  * PCA + Gaussian: the linear counterpart of an autoencoder, with as many components as the
    VAE has latent dimensions, sampled from N(0, diag(PCA variances)),
  * the VAE with the N(0, I) prior and with the Gaussian-mixture sampler.
Nearest-training-neighbour distances (pixel L2 on 0..1) of generated and test images show
whether samples are copies. Also times generating 1,000 images. Writes a table
(benchmarks/results/generate.md), generate.json and generate.png (a contact sheet per method).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imageae.data.arrays import load_image_array  # noqa: E402
from imageae.generation import contact_sheet, decode_latents, sample_latents  # noqa: E402
from imageae.metrics import frechet_distance, kernel_distance  # noqa: E402


def features(classifier, images, batch=1000):
    x = images.astype(np.float32) / 255.0
    return np.concatenate([np.asarray(classifier.features(x[i : i + batch])) for i in range(0, len(x), batch)])


def pca_samples(train, k, n, seed):
    x = train.reshape(len(train), -1).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    std = s[:k] / np.sqrt(len(x) - 1)
    z = np.random.default_rng(seed).standard_normal((n, k)) * std
    out = np.clip(mean + z @ vt[:k], 0, 1).reshape((n,) + train.shape[1:])
    return np.round(out * 255).astype(np.uint8)


def nearest_distances(queries, train, chunk=500):
    q = queries.reshape(len(queries), -1).astype(np.float32) / 255.0
    t = train.reshape(len(train), -1).astype(np.float32) / 255.0
    t_sq = (t**2).sum(1)
    out = []
    for i in range(0, len(q), chunk):
        block = q[i : i + chunk]
        d2 = (block**2).sum(1)[:, None] + t_sq[None] - 2 * block @ t.T
        out.append(np.sqrt(np.clip(d2.min(1), 0, None)))
    return np.concatenate(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "digits" / "mnist"))
    parser.add_argument("--model", default="vae-digits")
    parser.add_argument("--classifier", default=str(ROOT / "saved_models" / "digit-classifier.keras"))
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "t10k-images-idx3-ubyte.gz").exists():
        sys.exit(f"MNIST not found in {data}: pass --data (expects x_train.npz and t10k-images-idx3-ubyte.gz)")

    import keras

    import imageae.models.classifier  # noqa: F401
    from imageae.registry import load_model
    from imageae.runtime import with_precision

    classifier = keras.saving.load_model(args.classifier, compile=False)
    vae = with_precision(load_model(args.model, job="generate"))
    train = load_image_array(data / "x_train.npz", size=28, channels=1)
    test = load_image_array(data / "t10k-images-idx3-ubyte.gz", size=28, channels=1)
    n = args.samples
    f_test = features(classifier, test)

    candidates = {"real vs real (train images, floor)": train[:n]}
    candidates[f"PCA + Gaussian ({vae.latent_dim} components)"] = pca_samples(train, vae.latent_dim, n, args.seed)
    timings = {}
    for sampler in ("normal", "gmm"):
        start = time.perf_counter()
        z = sample_latents(vae, n, seed=args.seed, temperature=args.temperature, sampler=sampler)
        candidates[f"VAE, {'N(0, I) prior' if sampler == 'normal' else 'GMM sampler'}, T={args.temperature}"] = (
            decode_latents(vae, z)
        )
        timings[sampler] = time.perf_counter() - start
    decode_latents(vae, sample_latents(vae, 100, seed=1))  # warm
    start = time.perf_counter()
    decode_latents(vae, sample_latents(vae, 1000, seed=2, sampler="gmm"))
    seconds_per_1000 = time.perf_counter() - start

    test_nn = nearest_distances(test[:1000], train)
    rows = []
    for name, images in candidates.items():
        f = features(classifier, images)
        kid, kid_std = kernel_distance(f, f_test, seed=args.seed)
        nn = nearest_distances(images[:1000], train) if not name.startswith("real") else None
        rows.append({
            "method": name,
            "fid": round(frechet_distance(f, f_test), 3),
            "kid_x1000": round(kid * 1000, 3),
            "kid_std_x1000": round(kid_std * 1000, 3),
            "nn_distance_median": None if nn is None else round(float(np.median(nn)), 3),
            "fraction_closer_than_1st_pct_of_test": None if nn is None
            else round(float((nn < np.percentile(test_nn, 1)).mean()), 4),
        })
        print(f"{name:45s} FID {rows[-1]['fid']:8.3f}  KIDx1000 {rows[-1]['kid_x1000']:8.3f}")
    pca = next(r for r in rows if r["method"].startswith("PCA"))
    for r in rows:
        r["fid_ratio_to_pca"] = round(r["fid"] / pca["fid"], 4)
        r["kid_ratio_to_pca"] = round(r["kid_x1000"] / pca["kid_x1000"], 4) if pca["kid_x1000"] > 0 else None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    from imageae.runtime import describe_device

    result = {
        "command": "python benchmarks/generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "device": describe_device(),
        "model": args.model,
        "samples": n,
        "reference": "MNIST test set, 10,000 images (t10k)",
        "feature_space": "penultimate layer (128-d) of saved_models/digit-classifier.keras",
        "test_nn_distance_median": round(float(np.median(test_nn)), 3),
        "seconds_to_generate_1000": round(seconds_per_1000, 3),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Digits, {n} samples vs the 10,000 MNIST test images; features of the project's digit classifier. "
        f"`{result['command']}` at {commit}, {result['device']}.",
        "",
        "| method | FID | KID x1000 | FID / PCA | KID / PCA | median NN distance to train |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        nn = "-" if r["nn_distance_median"] is None else f"{r['nn_distance_median']:.3f}"
        lines.append(f"| {r['method']} | {r['fid']:.2f} | {r['kid_x1000']:.2f} ± {r['kid_std_x1000']:.2f} | "
                     f"{r['fid_ratio_to_pca']:.3f} | {r['kid_ratio_to_pca']:.3f} | {nn} |")
    lines += ["", f"Test images' median NN distance to train: {result['test_nn_distance_median']:.3f}. "
              f"Generating 1,000 digits: {seconds_per_1000:.2f} s."]
    (out / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(candidates), figsize=(4 * len(candidates), 4.4))
    for ax, (name, images), r in zip(axes, candidates.items(), rows):
        ax.imshow(contact_sheet(images[:64], columns=8)[..., 0], cmap="gray")
        ax.set_title(f"{name}\nFID {r['fid']:.2f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "generate.png", dpi=110)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
