"""Base selection cost: encode-once (ours) against the original quadratic scheme.

mmm2025's selection code re-encoded every candidate image of the gallery for every
query, so N queries with K candidates each cost N * N*K image encodes. Ours encodes
each candidate once (N*K encodes, cached in results/cache/clip) and scores with one
matrix product. Both run here on the tiny CLIP stand-in (64x64 images) on CPU; the
quadratic scheme is run for real up to --max-quadratic queries and extrapolated
(labelled) beyond, since its cost is N^2 * K * (seconds per encode).

    .venv/bin/python bench/selection_cost.py --sizes 100 400 1600 --candidates 3
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ctrlbench.bases.selection import best_candidates
from ctrlbench.models.loaders import load_model
from ctrlbench.models.tiny import build_tiny


class CountingClip:
    """Wraps a ClipModel and counts image encodes."""

    def __init__(self, clip):
        self.clip, self.encodes = clip, 0

    def encode_images(self, images):
        self.encodes += len(images)
        return self.clip.encode_images(images)

    def encode_texts(self, texts):
        return self.clip.encode_texts(texts)


def make_inputs(n_queries: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n_queries * k)]
    candidates = pd.DataFrame({"item_id": np.repeat([f"q{i:05d}" for i in range(n_queries)], k),
                               "method": np.tile([f"m{j}" for j in range(k)], n_queries),
                               "sample": 0})
    prompts = [f"a photo of bird species {i}" for i in range(n_queries)]
    return images, candidates, prompts


def select_encode_once(clip, images, candidates, prompts, batch_size=64):
    emb = torch.cat([clip.encode_images(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])
    text = clip.encode_texts(prompts).numpy()
    keys = pd.DataFrame({"item_id": sorted(set(candidates["item_id"]))})
    return best_candidates(candidates, emb.numpy(), keys, text)


def select_quadratic(clip, images, candidates, prompts, batch_size=64):
    """The original scheme: for each query, encode the whole candidate gallery again."""
    chosen = []
    for q, prompt in enumerate(prompts):
        emb = torch.cat([clip.encode_images(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])
        text = clip.encode_texts([prompt])[0]
        rows = np.flatnonzero(candidates["item_id"].to_numpy() == f"q{q:05d}")
        chosen.append(rows[int(np.argmax(emb[rows].numpy() @ text.numpy()))])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--candidates", type=int, default=3, help="K: candidate images per query")
    parser.add_argument("--max-quadratic", type=int, default=100, help="run the quadratic scheme up to this N")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny("open_clip", f"{tmp}/clip")
        clip = load_model({"results_dir": tmp, "models": {"clip": {"kind": "open_clip", "source": f"{tmp}/clip"}}},
                          "clip")
    warm_images, warm_candidates, warm_prompts = make_inputs(8, args.candidates, seed=1)
    select_encode_once(clip, warm_images, warm_candidates, warm_prompts)  # one-off start-up costs
    rows = []
    for n in args.sizes:
        images, candidates, prompts = make_inputs(n, args.candidates)
        ours = CountingClip(clip)
        start = time.perf_counter()
        select_encode_once(ours, images, candidates, prompts)
        ours_s = time.perf_counter() - start
        per_encode = ours_s / ours.encodes
        if n <= args.max_quadratic:
            quad = CountingClip(clip)
            start = time.perf_counter()
            select_quadratic(quad, images, candidates, prompts)
            quad_s, quad_encodes, how = time.perf_counter() - start, quad.encodes, "measured"
        else:
            quad_encodes, how = n * n * args.candidates, "extrapolated"
            quad_s = quad_encodes * per_encode
        rows.append({"queries": n, "candidates_per_query": args.candidates, "ours_encodes": ours.encodes,
                     "ours_seconds": round(ours_s, 2), "original_encodes": quad_encodes,
                     "original_seconds": round(quad_s, 1), "original_timing": how})
        print(rows[-1], flush=True)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False) if hasattr(pd.DataFrame, "to_markdown") else pd.DataFrame(rows))


if __name__ == "__main__":
    main()
