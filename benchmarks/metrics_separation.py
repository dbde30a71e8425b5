"""Do the metrics separate real images from seamed ones? A calibration table on the built-in data.

    python benchmarks/metrics_separation.py               # shapes + faces, 32 px, N = 2 and 4 (~1-2 min, CPU)
    python benchmarks/metrics_separation.py --json out.json

For each dataset two disjoint sets of real images, A (the reference) and B, are loaded: shapes
(train vs test split, ``--shapes`` images each) and the 100 LFW faces (50 vs 50, unflipped). B is then
compared with A as it is and after three degradations:

- ``shuffled``: every patch taken from a different image (:func:`patchlab.metrics.shuffle_patches`),
  what a patch model without position / global context could produce at worst;
- ``offset``: each patch shifted in brightness by its own uniform offset in [-0.1, 0.1]
  (:func:`patchlab.metrics.offset_patches`), simulating patches that disagree in tone (missing GCC);
- ``noise``: uniform noise in [-1, 1], the far end of every distance.

Columns: the seam score at the N x N borders (real images: about 1.0), SWD x 1e3, KID (+- standard
error) and FID on the offline random-CNN features (these are NOT comparable to published numbers), and
the shapes coherence score. Everything is seeded; two runs print the same table.
"""

import argparse
import json
import time
import warnings

import torch

from patchlab import metrics as M
from patchlab.data import load_images, make_dataset
from patchlab.runtime import make_generator

SIZE = 32


def datasets(shapes_count: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (reference A, compared B)}, each [n x 3 x 32 x 32] in [-1, 1]."""
    shapes_a = load_images(make_dataset("shapes", image_size=SIZE, size=shapes_count), range(shapes_count))
    shapes_b = load_images(make_dataset("shapes", image_size=SIZE, split="test", size=shapes_count),
                           range(shapes_count))
    faces = torch.cat([load_images(make_dataset("faces", image_size=SIZE, split=s, flip=False), range(n))
                       for s, n in (("train", 90), ("test", 10))])
    order = torch.randperm(100, generator=make_generator(0))
    return {"shapes": (shapes_a, shapes_b), "faces": (faces[order[:50]], faces[order[50:]])}


def rows_for(name: str, a: torch.Tensor, b: torch.Tensor, extractor: M.FeatureExtractor) -> list[dict]:
    feats_a = extractor(a)
    noise = torch.rand(b.shape, generator=make_generator(7)) * 2 - 1

    def distances(images: torch.Tensor) -> dict:
        feats = extractor(images)
        kid, kid_se = M.kid_from_features(feats_a, feats, generator=make_generator(11))
        return {"swd": M.sliced_wasserstein(a, images, generator=make_generator(12)), "kid": kid, "kid_se": kid_se,
                "fid": M.fid_from_features(feats_a, feats)}

    same = {"real": distances(b), "noise": distances(noise)}  # independent of N
    out = []
    for n in (2, 4):
        g = make_generator(n)
        conditions = {"real": b, "shuffled": M.shuffle_patches(b, n, generator=g),
                      "offset 0.1": M.offset_patches(b, n, amount=0.1, generator=g), "noise": noise}
        for condition, images in conditions.items():
            out.append({"dataset": name, "N": n, "images": condition, "count": len(images),
                        "seam": M.seam_score(images, n),
                        **(same[condition] if condition in same else distances(images)),
                        "coherence": M.coherence(images, n) if name == "shapes" else None})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| dataset | N | images | seam score | SWD x1e3 | KID (offline) | FID (offline) | coherence |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        coherence = "-" if r["coherence"] is None else f"{r['coherence']:.2f}"
        lines.append(f"| {r['dataset']} ({r['count']}) | {r['N']} | {r['images']} | {r['seam']:.2f} | {r['swd']:.1f} "
                     f"| {r['kid']:.4f} +- {r['kid_se']:.4f} | {r['fid']:.2f} | {coherence} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, default=128, help="shapes images per set")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: immune to a busy machine)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.OfflineFeaturesWarning)
        extractor = M.feature_extractor("offline")
    rows = [row for name, (a, b) in datasets(args.shapes).items() for row in rows_for(name, a, b, extractor)]
    print(table(rows))
    print(f"\nreference A vs compared B (disjoint real sets); KID/FID features: {extractor.name}")
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"features": extractor.name, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
