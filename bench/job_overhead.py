"""Job overhead: a generation method's images/s inside the DAG against a plain diffusers
loop in one process, on one shard of --images images (tiny random-weight models, CPU).

Methods: SD (generate_sd), ControlNet canny (regenerate_controlnet, on the SD images as
bases), SDEdit (guided_synthesis, on toy stroke paintings) and MultiDiffusion panorama
(generate_panorama, one panorama per toy landscape prompt), with the demo's settings
(config.yaml: 64x64, 4 / 4 / 6 steps, batch sizes 8 / 8 / 4, two images per prompt for SD
and ControlNet; 64x192 panoramas, 4 steps, window 8, stride 4, one view per UNet call).
For the panorama, "images" are panoramas, and both sides also save its three square
crops. Everything runs in a temporary working directory:

- setup (untimed): toy data, tiny models, items and prompts of one shard (n_shards 1);
- DAG: `snakemake --cores 1 <shard folder> --forcerun <rule>` timed around the
  snakemake process, i.e. snakemake start-up + DAG + the job (python start, imports,
  model load, generation, PNGs, params.json, manifest). Nothing is subtracted;
- plain script: this file in --plain-loop mode, a fresh python process that imports
  torch + diffusers, loads the same tiny model folder with the diffusers pipeline class,
  and runs the loop over the same prompts (and base images / paintings) with the same
  steps, size, guidance, batch size and seed, saving the PNGs. It reports the loop's own
  time; start-up = the process's wall time minus the loop (python + imports + load);
- fixed cost per job (SD only): the same --images images as 1 job and as --split jobs
  (n_shards = --split), both sequential; (T_split - T_1) / (split - 1).

Rules declare no threads, so each job runs torch with 1 thread; the plain loop sets
torch.set_num_threads(1) too. The issue's target: DAG images/s >= 95% of the plain
loop's on a 64-image shard. Results: printed, and saved to
bench/results/job_overhead.json with machine info.

    .venv/bin/python bench/job_overhead.py --images 64 --repeats 3 --split 4
    .venv/bin/python bench/job_overhead.py --images 4 --repeats 1 --split 2   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
RESULTS = ROOT / "bench" / "results"

METHODS = {  # method name in the bench config: (rule, dataset)
    "sd": ("generate_sd", "cub"),
    "cn": ("regenerate_controlnet", "cub"),
    "sdedit": ("guided_synthesis", "strokes"),
    "panorama": ("generate_panorama", "landscapes"),
}
MAX_PANORAMAS = 80  # toy landscape prompts available (ctrlbench/data/toy.py)


# --- the DAG --------------------------------------------------------------------------

from machine import machine_info  # noqa: E402  (bench/machine.py)

def bench_config(images: int, n_shards: int = 1) -> dict:
    """config.yaml cut to SD and ControlNet on toy CUB, SDEdit on toy strokes and the
    panorama on toy landscape prompts, each making `images` images (panoramas) in one
    shard with the demo's parameters (no sweeps)."""
    import yaml

    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    demo = config["methods"]
    items = images // 2  # SD and ControlNet: two images per item
    config["n_shards"] = n_shards
    config["toy"]["cub"] = {"n_classes": 2 if items % 2 == 0 else 1, "train_per_class": 1,
                            "test_per_class": items // 2 if items % 2 == 0 else items}
    config["toy"]["strokes"] = {"n_images": images}
    config["toy"]["prompts"] = {"n_prompts": min(images, MAX_PANORAMAS)}
    config["datasets"] = {name: config["datasets"][name] for name in ("cub", "strokes", "landscapes")}
    config["methods"] = {
        "sd": {**demo["sd_template"], "datasets": ["cub"]},
        "cn": {**demo["cn_template"], "datasets": ["cub"], "base": "sd"},
        "sdedit": {**demo["sdedit"], "params": {**demo["sdedit"]["params"], "strength": 0.8}},
        "panorama": demo["panorama"],
    }
    config["methods"]["sd"].pop("sweep")
    config["methods"]["sdedit"].pop("sweep")
    assert config["methods"]["sd"]["params"]["images_per_prompt"] == 2
    assert config["methods"]["cn"]["params"]["samples_per_input"] == 2
    for key in ("fid", "aesthetic"):
        config["evaluation"].pop(key)
    config.pop("report")
    return config


def shard_dir(method: str, shard: int = 0) -> str:
    return f"results/images/{METHODS[method][1]}/{method}/default/shard-{shard:03d}"


def snakemake(workdir: Path, *args: str) -> float:
    """Run snakemake (--cores 1) in workdir; return its wall time in seconds."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "1",
           *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}")
    return wall


def write_config(workdir: Path, config: dict) -> None:
    import yaml

    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def dag_run(workdir: Path, method: str, shards: list[int]) -> float:
    """Wall time of a snakemake run that (re)makes the method's shard folders and nothing else."""
    return snakemake(workdir, *[shard_dir(method, s) for s in shards], "--forcerun", METHODS[method][0])


def manifest_rows(workdir: Path, method: str, shards=(0,)) -> int:
    """Images the method's shards hold: manifest rows, or panoramas (a row per crop)."""
    import csv

    def count(rows):
        return len({row["panorama"] for row in rows}) if method == "panorama" else len(rows)

    return sum(count(list(csv.DictReader(open(workdir / shard_dir(method, s) / "manifest.csv")))) for s in shards)


# --- the plain loop (a separate process: --plain-loop) ----------------------------------

def plain_loop(spec: dict) -> dict:
    """One process: import, load the tiny model folder, generate and save every image.
    Prints {imports_s, load_s, loop_s, images} as JSON."""
    start = time.perf_counter()
    import numpy as np
    import pandas as pd
    import torch
    from diffusers import (ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           StableDiffusionImg2ImgPipeline, StableDiffusionPanoramaPipeline, StableDiffusionPipeline)
    from PIL import Image
    import cv2

    torch.set_num_threads(1)
    imported = time.perf_counter()
    method, params, models, rows = spec["method"], spec["params"], spec["models"], spec["rows"]
    common = {"safety_checker": None, "requires_safety_checker": False}
    if method == "sd":
        pipe = StableDiffusionPipeline.from_pretrained(models["sd"], **common)
    elif method == "cn":
        controlnet = ControlNetModel.from_pretrained(models["controlnet"])
        pipe = StableDiffusionControlNetPipeline.from_pretrained(models["sd"], controlnet=controlnet, **common)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif method == "panorama":
        pipe = StableDiffusionPanoramaPipeline.from_pretrained(models["sd"], **common)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        # Its __call__ uses get_views' default window and stride (64, 8): bind the config's.
        views = pipe.get_views
        pipe.get_views = lambda height, width, **kw: views(height, width, window_size=params["window_size"],
                                                           stride=params["stride"], **kw)
    else:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(models["sd"], **common)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                                   set_alpha_to_one=False, steps_offset=1)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()

    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame(rows)
    if method == "panorama":  # one prompt per call, as the DAG's job does
        n = 0
        for prompt in rows["prompt"]:
            image = pipe(prompt, height=params["height"], width=params["width"],
                         num_inference_steps=params["num_inference_steps"], guidance_scale=params["guidance_scale"],
                         view_batch_size=params["view_batch_size"],
                         generator=torch.Generator("cpu").manual_seed(params["seed"])).images[0]
            image.save(out / f"{n:05d}.png")
            side = image.height  # the DAG's square crops, side by side (widths are multiples here)
            for j, left in enumerate(range(0, image.width - side + 1, side)):
                image.crop((left, 0, left + side, side)).save(out / f"{n:05d}_c{j:02d}.png")
            n += 1
        done = time.perf_counter()
        return {"imports_s": round(imported - start, 3), "load_s": round(loaded - imported, 3),
                "loop_s": round(done - loaded, 3), "images": n}
    per_input = params.get("images_per_prompt", params.get("samples_per_input", 1))
    per_batch = max(1, params["batch_size"] // per_input)  # inputs per call
    n = 0
    for start_row in range(0, len(rows), per_batch):
        batch = rows.iloc[start_row:start_row + per_batch]
        generator = torch.Generator("cpu").manual_seed(params["seed"])
        kwargs = {"prompt": batch["prompt"].tolist(), "num_inference_steps": params["num_inference_steps"],
                  "guidance_scale": params["guidance_scale"], "num_images_per_prompt": per_input,
                  "generator": generator}
        if method == "sd":
            images = pipe(**kwargs, height=params["height"], width=params["width"]).images
        elif method == "cn":
            controls = []
            for path in batch["input"]:
                gray = cv2.cvtColor(np.asarray(Image.open(path).convert("RGB")), cv2.COLOR_RGB2GRAY)
                edges = cv2.Canny(gray, params["low_threshold"], params["high_threshold"])
                controls.append(Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2)))
            images = pipe(**kwargs, image=controls, negative_prompt=[params["negative_prompt"]] * len(batch),
                          controlnet_conditioning_scale=params["controlnet_conditioning_scale"]).images
        else:
            paintings = [Image.open(p).convert("RGB").resize((params["width"], params["height"]), Image.BICUBIC)
                         for p in batch["input"]]
            images = pipe(**kwargs, image=paintings, strength=params["strength"]).images
        for image in images:
            image.save(out / f"{n:05d}.png")
            n += 1
    done = time.perf_counter()
    return {"imports_s": round(imported - start, 3), "load_s": round(loaded - imported, 3),
            "loop_s": round(done - loaded, 3), "images": n}


def plain_spec(workdir: Path, config: dict, method: str, out_dir: Path) -> dict:
    """What the plain loop needs: the method's params, model folders, and one row per
    input (prompt, and the base image / painting) read from the DAG's own manifest."""
    import pandas as pd

    from ctrlbench.config import method_paramsets

    folder = workdir / shard_dir(method)
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"item_id": str}, keep_default_na=False)
    if method in ("sd", "panorama"):
        rows = manifest.drop_duplicates("item_id")[["prompt"]].assign(input="")
    elif method == "cn":
        rows = manifest.drop_duplicates("item_id")
        base = workdir / shard_dir("sd")
        rows = rows.assign(input=[str(base / name) for name in rows["base_image"]])[["prompt", "input"]]
    else:
        rows = manifest.assign(input=[str(p if Path(p).is_absolute() else workdir / p)
                                      for p in manifest["source_image"]])[["prompt", "input"]]
    models = {key: str(workdir / "results/models/tiny" / key) for key in ("sd", "controlnet")}
    params = next(iter(method_paramsets(config, method).values()))
    return {"method": method, "params": params, "models": models, "rows": rows.to_dict("records"),
            "out_dir": str(out_dir)}


def plain_run(spec_file: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--plain-loop", str(spec_file)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"plain loop failed:\n{result.stderr[-4000:]}")
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {**timings, "wall_s": round(wall, 3), "startup_s": round(wall - timings["loop_s"], 3)}


# --- main -----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per shard (even)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (the median is reported)")
    parser.add_argument("--split", type=int, default=4, help="SD as this many jobs for the fixed cost per job "
                                                             "(0: skip)")
    parser.add_argument("--workdir", type=Path, help="keep the working directory here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "job_overhead.json")
    parser.add_argument("--plain-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        print(json.dumps(plain_loop(json.loads(args.plain_loop.read_text()))))
        return
    if args.images < 2 or args.images % 2:
        parser.error("--images must be even and >= 2")
    if "panorama" in args.methods and args.images > MAX_PANORAMAS:
        parser.error(f"the panorama has {MAX_PANORAMAS} toy prompts: --images at most {MAX_PANORAMAS}")
    sys.path.insert(0, str(ROOT))

    record = {"benchmark": "job_overhead", "machine": machine_info(),
              "args": {k: str(v) for k, v in vars(args).items() if k != "plain_loop"}, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="job_overhead-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config = bench_config(args.images)
        write_config(workdir, config)
        # Setup: everything up to the generation jobs (prompts, tiny models, toy data, items).
        setup_s = snakemake(workdir, *[f"results/prompts/{d}/{config['methods'][m]['prompts']}/shard-000.csv"
                                       for m, (_, d) in METHODS.items()],
                            *[f"results/models/tiny/{k}" for k in ("sd", "controlnet")])
        print(f"setup (toy data, tiny models, items, prompts; not a measurement): {setup_s:.1f} s", flush=True)
        if "cn" in args.methods and "sd" not in args.methods:
            snakemake(workdir, shard_dir("sd"))  # ControlNet's base images

        rows = []
        for method in [m for m in METHODS if m in args.methods]:  # SD before ControlNet (its bases)
            dag = [dag_run(workdir, method, [0]) for _ in range(args.repeats)]
            images = manifest_rows(workdir, method)
            spec_file = workdir / f"plain-{method}.json"
            spec_file.write_text(json.dumps(plain_spec(workdir, config, method, workdir / f"plain-{method}")))
            plain = [plain_run(spec_file) for _ in range(args.repeats)]
            if any(p["images"] != images for p in plain):
                raise SystemExit(f"{method}: the plain loop made {plain[0]['images']} images, the DAG {images}")
            dag_s = statistics.median(dag)
            med = {key: statistics.median(p[key] for p in plain) for key in ("imports_s", "load_s", "loop_s",
                                                                              "wall_s", "startup_s")}
            result = {"images": images, "dag_runs_s": dag, "plain_runs": plain, "dag_s": dag_s, "plain": med,
                      "dag_images_per_s": images / dag_s, "loop_images_per_s": images / med["loop_s"],
                      "script_images_per_s": images / med["wall_s"],
                      "dag_vs_loop": med["loop_s"] / dag_s, "dag_vs_script": med["wall_s"] / dag_s,
                      "dag_minus_loop_s": dag_s - med["loop_s"], "dag_minus_script_s": dag_s - med["wall_s"],
                      # loop seconds a shard needs for the DAG to reach 95% of the loop's images/s,
                      # if the DAG's fixed cost (dag_s - loop_s) stays the same
                      "loop_s_for_95pct": 19 * (dag_s - med["loop_s"]),
                      "dag_torch_threads": json.loads((workdir / shard_dir(method) / "params.json").read_text())
                      .get("torch_threads")}
            record["methods"][method] = result
            rows.append((method, result))
            print(f"{method}: {images} images; DAG {dag_s:.2f} s ({result['dag_images_per_s']:.2f} img/s); "
                  f"plain loop {med['loop_s']:.2f} s ({result['loop_images_per_s']:.2f} img/s), "
                  f"start-up {med['startup_s']:.2f} s (imports {med['imports_s']:.2f}, load {med['load_s']:.2f}); "
                  f"DAG / loop throughput {100 * result['dag_vs_loop']:.0f}% "
                  f"(95% needs a {result['loop_s_for_95pct']:.0f} s loop)", flush=True)

        if args.split > 1 and "sd" in args.methods:
            write_config(workdir, bench_config(args.images, n_shards=args.split))
            shards = list(range(args.split))
            snakemake(workdir, *[f"results/prompts/cub/template/shard-{s:03d}.csv" for s in shards])
            split = [dag_run(workdir, "sd", shards) for _ in range(args.repeats)]
            per_shard = [manifest_rows(workdir, "sd", [s]) for s in shards]
            one = record["methods"]["sd"]["dag_s"]
            record["fixed_cost_per_job"] = {
                "method": "sd", "jobs": args.split, "images_per_job": per_shard, "one_job_s": one,
                "split_runs_s": split, "split_s": statistics.median(split),
                "per_extra_job_s": (statistics.median(split) - one) / (args.split - 1)}
            fixed = record["fixed_cost_per_job"]
            note = " (a job with no images loads no model: not a fair split)" if 0 in per_shard else ""
            print(f"sd as 1 job: {one:.2f} s, as {args.split} jobs {per_shard}: {fixed['split_s']:.2f} s -> "
                  f"{fixed['per_extra_job_s']:.2f} s per extra job{note}", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("\n| method | images | DAG: s | DAG: img/s | plain loop: s | loop: img/s | start-up: s "
          "| plain script: s | DAG / loop | DAG / script |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in rows:
        p = r["plain"]
        print(f"| {method} | {r['images']} | {r['dag_s']:.2f} | {r['dag_images_per_s']:.2f} | {p['loop_s']:.2f} | "
              f"{r['loop_images_per_s']:.2f} | {p['startup_s']:.2f} | {p['wall_s']:.2f} | "
              f"{100 * r['dag_vs_loop']:.0f}% | {100 * r['dag_vs_script']:.0f}% |")
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
