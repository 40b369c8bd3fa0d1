"""The codec's SavedModel against the Python API on whole photos: are the latents identical?

    python benchmarks/export_codec.py [--model codec-v4] [--data DIR] [--limit 8] [--qualities 1 5 9]

Exports the model (`imageae.export_saved_model`), loads it with `tf.saved_model.load`, and for
every photo and quality compares the `analysis` signature's z symbols, y symbols and scale
indexes with `imageae.codec.analyze_image`, and the TF-Serving client's file
(`imageae.codec.serving.ServedCodec`) with `imageae.compress`'s bytes. The test suite checks
one small crop; this counts differences over whole photos. Writes
benchmarks/results/export_codec.json.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "photos" / "BSDS500" / "val"

from common import Timer, git_commit

from imageae.codec.api import DEFAULT_CODEC


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_CODEC,
                   help=f"a registered codec or a .keras path (default: {DEFAULT_CODEC})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of photos (default: BSDS500 val)")
    p.add_argument("--limit", type=int, default=8, help="photos, in name order (default: 8)")
    p.add_argument("--qualities", type=int, nargs="+", default=[1, 5, 9], help="qualities (default: 1 5 9)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_codec.json")
    args = p.parse_args(argv)

    import tensorflow as tf

    import imageae
    from imageae.codec.api import codec_session
    from imageae.codec import analyze_image
    from imageae.codec.serving import ServedCodec
    from imageae.data.io import find_images

    files = [path for path, _ in find_images(args.data)][: args.limit]
    if not files:
        sys.exit(f"no images in {args.data}")
    session = codec_session(args.model)
    totals = {"y_symbols": 0, "z_symbols": 0, "scale_indexes": 0}
    differing = dict.fromkeys(totals, 0)
    same_files = 0
    with tempfile.TemporaryDirectory() as folder, Timer() as timer:
        loaded = tf.saved_model.load(str(imageae.export_saved_model(args.model, folder)))

        def predict(signature, inputs):
            result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in result.items()}

        served = ServedCodec(predict, session.name)
        for path in files:
            image = np.asarray(Image.open(path).convert("RGB"))
            for quality in args.qualities:
                out = predict("analysis", {"images": image[None], "quality": np.int32(quality)})
                expected = analyze_image(session, image, quality)
                for key in totals:
                    got, want = out[key][0], getattr(expected, key)
                    totals[key] += want.size
                    differing[key] += int(np.sum(got != want))
                same_files += served.compress(image, quality) == imageae.compress(image, quality=quality,
                                                                                   model=args.model)
    runs = len(files) * len(args.qualities)
    result = {
        "command": "python benchmarks/export_codec.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": git_commit(),
        "model": args.model,
        "data": str(args.data),
        "photos": len(files),
        "qualities": args.qualities,
        "symbols": totals,
        "differing": differing,
        "identical_files": f"{same_files} of {runs}",
        "seconds": round(timer.seconds, 1),
    }
    for key, total in totals.items():
        print(f"{key:>14}: {differing[key]} of {total:,} differ")
    print(f"client file == imageae.compress bytes: {same_files} of {runs}   ({timer.seconds:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
