"""Copy measured numbers from benchmarks/results/*.json into the model cards in saved_models/.

    python benchmarks/update_cards.py

Model cards must state measured metrics; this keeps them identical to the benchmark output
(with the command and commit that produced it) instead of typed by hand.
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ROOT / "saved_models"


def update(name, metrics):
    path = MODELS / f"{name}.json"
    card = json.loads(path.read_text())
    card["metrics"] = metrics
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"updated {path.relative_to(ROOT)}")


def main():
    denoise = json.loads((RESULTS / "denoise.json").read_text())
    source = {"command": denoise["command"], "date": denoise["date"]}
    for name, sets in (("denoise-grey", ("Set12", "BSD68")), ("denoise-colour", ("CBSD68",))):
        psnr = {
            f"{row['set']} sigma {row['sigma']}": round(row["imageae_full"]["psnr"], 2)
            for row in denoise["summary"] if row["set"] in sets
        }
        ssim = {
            f"{row['set']} sigma {row['sigma']}": round(row["imageae_full"]["ssim"], 4)
            for row in denoise["summary"] if row["set"] in sets
        }
        update(name, {"psnr_db": psnr, "ssim": ssim, "protocol": "../shared/datasets/README.md; bfloat16 inference",
                      "source": source})
    generate = json.loads((RESULTS / "generate.json").read_text())
    source = {"command": generate["command"], "date": generate["date"], "commit": generate["commit"]}
    for key in ("digits", "faces"):
        section = generate.get(key)
        if not section:
            continue
        card = json.loads((MODELS / f"{section['model']}.json").read_text())
        rows = {r["method"]: {"fid": r["fid"], "kid_x1000": r["kid_x1000"], "fid_ratio_to_pca": r["fid_ratio_to_pca"]}
                for r in section["rows"]}
        update(section["model"], {**card.get("metrics", {}), "generation": {
            "feature_space": section["feature_space"], "reference": section["reference"],
            "samples": section["samples"], "results": rows,
            "seconds_to_generate_1000": section["seconds_to_generate_1000"], "source": source}})
    compress_path = RESULTS / "compress.json"
    if compress_path.exists():
        result = json.loads(compress_path.read_text())
        if not result["baselines_only"]:
            source = {"command": result["command"], "date": result["date"],
                      "commit": result["environment"]["git_commit"]}
            baselines = set(result["config"]["settings"])
            for name, curve in {m["name"]: m["curve"] for m in result["config"]["models"]}.items():
                if not (MODELS / f"{name}.json").exists():
                    print(f"{name}: no card in saved_models/ (a .keras file given to --model), left alone")
                    continue
                card = json.loads((MODELS / f"{name}.json").read_text())
                points = [{k: round(p[k], 4) for k in ("bpp", "psnr", "ms_ssim", "model_estimate_gap_pct")}
                          | {"quality": p["value"]}
                          for p in result["points"] if p["codec"] == curve and p["setting"].startswith(name + " ")]
                bd = {f"vs {row['anchor']}": None if row["psnr"] is None else round(row["psnr"], 1)
                      for row in result["bd_rate"] if row["test"] == curve and row["anchor"] in baselines}
                update(name, {**card.get("metrics", {}), "benchmark": {
                    "data": result["config"]["data"], "images": result["config"]["images"], "points": points,
                    "bd_rate_psnr_pct": bd, "source": source}})


if __name__ == "__main__":
    main()
