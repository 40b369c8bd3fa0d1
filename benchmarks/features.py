"""Latent features against PCA: k-NN and linear-probe accuracy on MNIST with 100 labels per class.

    python benchmarks/features.py [--data ../shared/datasets/digits/mnist] [--draws 5]
        [--minutes 3] [--work /tmp/imageae-features-bench] [--encoder NAME=MODEL ...]

The issue-21 protocol (part 3 of benchmarks/anomaly.py's list): every feature extractor sees the
20,000 MNIST training images of ``x_train.npz`` without labels (PCA is fitted, the autoencoders
are trained on them); then, for each of ``--draws`` seeded draws of 100 labelled images per
class from those 20,000, a classifier is fitted on the 1,000 labelled features and scored on
the 10,000 MNIST test images (``t10k-*.gz``):

  * k-NN: 5 nearest neighbours, Euclidean distance in the feature space as given (PCA scores
    unwhitened), majority vote;
  * linear probe: multinomial logistic regression (L2, C = 1 as scikit-learn's default; fitted
    with SciPy's L-BFGS) on features standardised with the unlabelled set's mean and std.

Rows, at 16 and 32 dimensions: PCA (the linear baseline, measured in the same run), and
convolutional autoencoders with that code size, each trained for at most ``--minutes`` on the
20,000 images and cached in ``--work``:

  * the anomaly job's recipe, ``imageae train anomaly --data PNGS --code-size N --max-minutes M``
    (its defaults: 32x32 input, filters 32/64/128), and at 32 its sparse (``--sparsity l1``) and
    contractive (``--contractive 0.01``) variants; the digits are written as PNGs to
    ``--work``/mnist20k first, as the recipe reads image folders;
  * a small recipe of this script (:func:`train_autoencoder`: 28x28, conv 32/64, dense 256,
    Keras ``fit`` with imageae.training's ``TimeBudget``), the fallback from before the anomaly
    recipe existed;

the shipped vae-digits encoder mean (latent 16; trained on the same 20,000 images) and any
``--encoder NAME=MODEL`` given (a .keras file ``imageae.embed`` takes). Reference rows: raw
pixels (784) and the shipped digit-classifier's 128-d features (trained with labels: a
supervised ceiling, not a competitor). Every encoder's features come through ``imageae.embed``.

Writes benchmarks/results/features.md and features.json.
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
from imageae.data.arrays import _read_idx, load_image_array  # noqa: E402

LABELS_PER_CLASS = 100
K_NEIGHBOURS = 5


# --- data ---------------------------------------------------------------------------------
def load_mnist(data):
    data = Path(data)
    x_train = load_image_array(data / "x_train.npz", size=28, channels=1)
    with np.load(data / "y_train.npz") as f:
        y_train = np.asarray(f[f.files[0]]).astype(np.int64)
    x_test = load_image_array(data / "t10k-images-idx3-ubyte.gz", size=28, channels=1)
    y_test = _read_idx(data / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if len(y_train) != len(x_train):
        raise ValueError(f"{len(x_train)} training images but {len(y_train)} labels")
    return x_train, y_train, x_test, y_test


def label_draw(y, per_class, seed):
    """Indices of ``per_class`` images of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])


# --- classifiers (numpy/SciPy: scikit-learn is not a dependency) ---------------------------
def knn_accuracy(train, y_train, test, y_test, k=K_NEIGHBOURS, chunk=2000):
    train = train.astype(np.float64)
    t_sq = (train**2).sum(1)
    correct = 0
    for start in range(0, len(test), chunk):
        q = test[start : start + chunk].astype(np.float64)
        d = (q**2).sum(1)[:, None] - 2 * q @ train.T + t_sq[None]
        nearest = np.argsort(d, axis=1)[:, :k]
        votes = np.zeros((len(q), 10))
        # ties go to the class of the nearer neighbours: each vote is 1 plus a tiny rank bonus
        for rank in range(k):
            np.add.at(votes, (np.arange(len(q)), y_train[nearest[:, rank]]), 1.0 + 1e-3 * (k - rank))
        correct += int((votes.argmax(1) == y_test[start : start + chunk]).sum())
    return correct / len(test)


def logistic_accuracy(train, y_train, test, y_test, *, c=1.0):
    """Multinomial logistic regression with an L2 penalty 1/(2C)||W||^2 on the summed loss."""
    from scipy.optimize import minimize

    n, d = train.shape
    x = np.hstack([train, np.ones((n, 1))]).astype(np.float64)
    onehot = np.eye(10)[y_train]
    penalty = np.ones((d + 1, 1))
    penalty[-1] = 0.0  # the intercept is not penalised

    def loss(w):
        w = w.reshape(d + 1, 10)
        logits = x @ w
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        value = -(onehot * log_p).sum() + 0.5 / c * (penalty * w**2).sum()
        grad = x.T @ (np.exp(log_p) - onehot) + penalty * w / c
        return value, grad.ravel()

    w = minimize(loss, np.zeros((d + 1) * 10), jac=True, method="L-BFGS-B", options={"maxiter": 1000}).x
    predicted = (np.hstack([test, np.ones((len(test), 1))]) @ w.reshape(d + 1, 10)).argmax(1)
    return float((predicted == y_test).mean())


def evaluate(name, dim, f_train, y_train, f_test, y_test, draws):
    """Mean and std over the label draws of k-NN and linear-probe accuracy."""
    mean, std = f_train.mean(0), f_train.std(0) + 1e-8
    knn, lin = [], []
    for seed in range(draws):
        idx = label_draw(y_train, LABELS_PER_CLASS, seed)
        knn.append(knn_accuracy(f_train[idx], y_train[idx], f_test, y_test))
        lin.append(logistic_accuracy((f_train[idx] - mean) / std, y_train[idx], (f_test - mean) / std, y_test))
    row = {"method": name, "dim": int(dim), "knn": float(np.mean(knn)), "knn_std": float(np.std(knn)),
           "linear": float(np.mean(lin)), "linear_std": float(np.std(lin)), "knn_draws": knn, "linear_draws": lin}
    print(f"{name:>34} d={dim:<4} k-NN {row['knn']:.4f} ± {row['knn_std']:.4f}   "
          f"linear {row['linear']:.4f} ± {row['linear_std']:.4f}", flush=True)
    return row


# --- feature extractors ----------------------------------------------------------------------
def pca_features(x_train, x_test, k):
    a = x_train.reshape(len(x_train), -1).astype(np.float64) / 255.0
    mean = a.mean(0)
    _, _, vt = np.linalg.svd(a - mean, full_matrices=False)
    project = vt[:k].T
    b = x_test.reshape(len(x_test), -1).astype(np.float64) / 255.0
    return (a - mean) @ project, (b - mean) @ project


def _autoencoder_class():
    import keras

    @keras.saving.register_keras_serializable(package="benchmarks")
    class BenchAutoencoder(keras.Model):
        """conv 32/2 -> conv 64/2 -> dense ``code_size`` (linear) -> mirrored decoder, Bernoulli
        (cross-entropy) reconstruction loss: the plain convolutional autoencoder of the textbooks
        (keras-io's vision/autoencoder.py with a dense code), with ``encode``/``code_size``, the
        protocol imageae.embed reads."""

        def __init__(self, code_size=16, image_size=28, channels=1, **kwargs):
            super().__init__(**kwargs)
            self.code_size, self.image_size, self.channels = int(code_size), int(image_size), int(channels)
            s = self.image_size // 4
            L = keras.layers
            self.encoder = keras.Sequential([
                keras.Input((self.image_size, self.image_size, self.channels)),
                L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
                L.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
                L.Flatten(), L.Dense(256, activation="relu"), L.Dense(self.code_size),
            ], name="encoder")
            self.decoder = keras.Sequential([
                keras.Input((self.code_size,)),
                L.Dense(256, activation="relu"), L.Dense(s * s * 64, activation="relu"), L.Reshape((s, s, 64)),
                L.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
                L.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
                L.Conv2D(self.channels, 3, padding="same"),
            ], name="decoder")

        def encode(self, x):
            return self.encoder(x)

        def call(self, x):
            return self.decoder(self.encoder(x))

        def get_config(self):
            config = super().get_config()
            config.update(code_size=self.code_size, image_size=self.image_size, channels=self.channels)
            return config

    return BenchAutoencoder


def train_autoencoder(x_train, code_size, *, minutes, path, seed=0, epochs=30):
    """A BenchAutoencoder trained on ``x_train`` (uint8) for at most ``minutes`` (TimeBudget of
    imageae.training) or ``epochs``; cached at ``path``."""
    import keras

    from imageae.training import TimeBudget

    cls = _autoencoder_class()
    if path.exists():
        print(f"using the cached {path}", flush=True)
        return keras.saving.load_model(path), json.loads(path.with_suffix(".json").read_text())
    keras.utils.set_random_seed(seed)
    model = cls(code_size=code_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = x_train.astype(np.float32) / 255.0
    budget = TimeBudget(minutes * 60)
    start = time.time()
    history = model.fit(x, x, batch_size=128, epochs=epochs, validation_split=0.05, callbacks=[budget], verbose=2)
    info = {"recipe": "benchmarks/features.py train_autoencoder (BenchAutoencoder)", "code_size": code_size,
            "epochs_run": len(history.history["loss"]), "wall_seconds": round(time.time() - start, 1),
            "time_budget_reached": budget.reached, "val_loss": float(history.history["val_loss"][-1]),
            "images": len(x_train)}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return model, info


ANOMALY_VARIANTS = {  # name: (code size, extra flags of 'imageae train anomaly')
    "anomaly-ae16": (16, []),
    "anomaly-ae32": (32, []),
    "anomaly-ae32-l1": (32, ["--sparsity", "l1"]),
    "anomaly-ae32-contractive": (32, ["--contractive", "0.01"]),
}


def train_anomaly_recipe(x_train, name, *, minutes, work):
    """The anomaly job's autoencoder ``name`` (:data:`ANOMALY_VARIANTS`), trained by its CLI on
    ``x_train`` written as PNGs; cached at ``work/NAME.keras``. Returns (path, description)."""
    import subprocess

    from PIL import Image

    code, flags = ANOMALY_VARIANTS[name]
    path = work / f"{name}.keras"
    command = ["imageae", "train", "anomaly", "--data", str(work / "mnist20k"), "-o", str(path), "--code-size",
               str(code), "--max-minutes", f"{minutes:g}", "--checkpoint-dir", str(work / f"ckpt-{name}"), *flags]
    kept = work / f"ckpt-{name}" / "best.keras"
    if not path.exists() and not kept.exists():
        pngs = work / "mnist20k"
        if len(list(pngs.glob("*.png"))) != len(x_train):
            pngs.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(x_train):
                Image.fromarray(image[..., 0]).save(pngs / f"{i:05d}.png")
        binary = str(Path(sys.executable).parent / "imageae")
        subprocess.run([binary, *command[1:]], check=False)
    if not path.exists():
        # The recipe trains, then calibrates its threshold: the autoencoder is trained once its best
        # checkpoint exists, whatever happened after (features need no threshold).
        if not kept.exists():
            raise RuntimeError(f"'{' '.join(command)}' wrote neither {path} nor {kept}")
        history = kept.parent / "history.csv"
        epochs = len(history.read_text().splitlines()) - 1 if history.exists() else "?"
        return kept, (f"{name}: `{' '.join(command)}`; the recipe stopped after training, before writing {path.name} "
                      f"(its calibration step failed), so its best checkpoint {kept} is used ({epochs} epochs)")
    card = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
    training = card.get("training", {})
    done = ", ".join(f"{k} {training[k]}" for k in ("epochs_run", "steps_done", "wall_seconds", "stop_reason")
                     if k in training)
    return path, f"{name}: `{' '.join(command)}`" + (f" ({done})" if done else "")


def embedded(x, model):
    import imageae

    return imageae.embed(x, model=model)


# --- report ----------------------------------------------------------------------------------
def _delta(row, base, key):
    """Mean difference to PCA, and the smallest over the label draws (PCA sees the same draws)."""
    paired = [a - b for a, b in zip(row[f"{key}_draws"], base[f"{key}_draws"])]
    return f"{100 * (row[key] - base[key]):+.1f} pt (min {100 * min(paired):+.1f})"


def write_results(rows, info, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "features.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    lines = [
        "# Latent features vs PCA: MNIST, 100 labels per class",
        "",
        (f"`{info['command']}` at {info['commit']}, {info['hardware']}, {info['date']} "
         "(the 2 cores were shared with other jobs while this ran)."),
        "",
        (f"Unlabelled: the {info['train_images']:,} images of x_train.npz (PCA fitted, autoencoders trained on "
         f"them). Labelled: {LABELS_PER_CLASS} per class drawn from them, {info['draws']} seeded draws (mean ± std). "
         f"Test: the {info['test_images']:,} MNIST test images. k-NN: {K_NEIGHBOURS} neighbours, Euclidean on the "
         "features as given. Linear: multinomial logistic regression (L2, C = 1) on standardised features."),
        "",
        "Δ: mean difference to PCA at the same dimension, and in brackets the smallest over the draws (each "
        "draw labels the same images for every method).",
        "",
        "| method | dim | k-NN accuracy | linear-probe accuracy | Δ k-NN vs PCA | Δ linear vs PCA |",
        "|---|---|---|---|---|---|",
    ]
    pca = {r["dim"]: r for r in rows if r["method"] == "PCA"}
    for r in rows:
        base = pca.get(r["dim"])
        dk = _delta(r, base, "knn") if base and r is not base else ""
        dl = _delta(r, base, "linear") if base and r is not base else ""
        lines.append(f"| {r['method']} | {r['dim']} | {100 * r['knn']:.1f} ± {100 * r['knn_std']:.1f} % "
                     f"| {100 * r['linear']:.1f} ± {100 * r['linear_std']:.1f} % | {dk} | {dl} |")
    lines += ["", "Encoders:", ""] + [f"- {line}" for line in info["encoders"]]
    (out_dir / "features.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/digits/mnist"))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of each autoencoder")
    parser.add_argument("--work", default="/tmp/imageae-features-bench", help="cache of the trained autoencoders")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=MODEL",
                        help="another encoder to compare (a .keras file imageae.embed takes)")
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the autoencoders, then stop")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args(argv)

    from imageae.runtime import import_tensorflow

    import_tensorflow()
    from imageae.training import hardware_summary

    x_train, y_train, x_test, y_test = load_mnist(args.data)
    work = Path(args.work)
    autoencoders, encoders = {}, []
    for code in (16, 32):
        model, info = train_autoencoder(x_train, code, minutes=args.minutes, path=work / f"ae{code}.keras")
        autoencoders[code] = model
        encoders.append(f"conv AE {code} (this script's recipe): {info['recipe']}, {info['epochs_run']} epochs in "
                        f"{info['wall_seconds']:.0f} s on {info['images']:,} images (time budget reached: "
                        f"{info['time_budget_reached']})")
    anomaly = {}
    for name in ANOMALY_VARIANTS:
        anomaly[name], description = train_anomaly_recipe(x_train, name, minutes=args.minutes, work=work)
        encoders.append(description)
    if args.train_only:
        return 0

    rows = []
    flat_train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
    flat_test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
    rows.append(evaluate("raw pixels (reference)", 784, flat_train, y_train, flat_test, y_test, args.draws))
    for code in (16, 32):
        p_train, p_test = pca_features(x_train, x_test, code)
        rows.append(evaluate("PCA", code, p_train, y_train, p_test, y_test, args.draws))
        for name, path in anomaly.items():
            if ANOMALY_VARIANTS[name][0] == code:
                rows.append(evaluate(f"{name} (imageae train anomaly)", code, embedded(x_train, str(path)), y_train,
                                     embedded(x_test, str(path)), y_test, args.draws))
        rows.append(evaluate(f"conv AE {code} (this script's recipe)", code, embedded(x_train, autoencoders[code]),
                             y_train, embedded(x_test, autoencoders[code]), y_test, args.draws))
        if code == 16:
            rows.append(evaluate("vae-digits (encoder mean)", 16, embedded(x_train, "vae-digits"), y_train,
                                 embedded(x_test, "vae-digits"), y_test, args.draws))
    encoders.append("vae-digits: the shipped VAE (saved_models/vae-digits.json), trained on the same 20,000 images")
    for spec in args.encoder:
        name, _, model = spec.partition("=")
        f_train = embedded(x_train, model)
        rows.append(evaluate(name, f_train.shape[1], f_train, y_train, embedded(x_test, model), y_test, args.draws))
        encoders.append(f"{name}: {model}")
    rows.append(evaluate("digit-classifier features (supervised, reference)", 128,
                         embedded(x_train, "digit-classifier"), y_train, embedded(x_test, "digit-classifier"),
                         y_test, args.draws))
    rows.sort(key=lambda r: (r["dim"], r["method"] != "PCA"))
    info = {"command": "python benchmarks/features.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": git_commit(), "hardware": hardware_summary()["device"], "date": time.strftime("%Y-%m-%d"),
            "train_images": len(x_train), "test_images": len(x_test), "draws": args.draws, "encoders": encoders}
    write_results(rows, info, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
