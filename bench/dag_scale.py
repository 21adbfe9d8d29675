"""DAG scale: build time and peak memory of a paper-scale dry run, and its no-op rerun.

The demo config (config.yaml) gets a paper-scale sweep grid (SD guidance scale,
ControlNet conditioning x guidance scale, SDEdit strength, GradOP+ strength x gradient
steps) and as many shards as it takes to reach about --jobs-target jobs. The toy data
stay tiny: a shard without items still has all its jobs, so the DAG has its full size
while the `items` checkpoint, which must have run for the DAG past it to exist, runs for
real in seconds. Steps, all in a temporary working directory:

1. calibration (skipped with --shards): dry runs at 1 and 2 shards give the jobs per
   shard, hence the shard count for --jobs-target;
2. toy data + `items` for real, at that shard count (untimed setup);
3. `snakemake -n --quiet rules` on the default target (`all`), --repeats times: wall
   time and peak RSS of the snakemake process, and the job count from its job stats;
4. one `snakemake -n` that prints every job (the usual dry run; its listing is parsed);
5. no-op rerun: every output of the listing is created empty (directories for outputs
   without a file suffix) with mtimes increasing along the DAG, as `snakemake --touch`
   would leave them (--touch itself sleeps 0.1 s per job: 30 minutes for 20k jobs),
   then `snakemake -n --quiet rules` is timed again and must find nothing to do. These
   outputs have no metadata records in .snakemake/metadata, so the rerun skips reading
   one small record per output file that a real no-op rerun reads: a lower bound.

With --profile, one more dry run runs under cProfile and the script reports where its
time goes: the DAG build and the dry-run job listing, a few Snakemake internals that cost
time on every job, and the time spent inside this project's own code (the input, params
and helper functions of rules/*.smk and the ctrlbench package). cProfile slows Python
about twofold, so read these as shares of the profiled total, not as seconds.

Wall time and peak RSS are measured by a small wrapper process around snakemake
(resource.getrusage of its child). Results: printed, and saved to
bench/results/dag_scale.json with machine info.

    .venv/bin/python bench/dag_scale.py --jobs-target 20000
    .venv/bin/python bench/dag_scale.py --jobs-target 500 --repeats 1   # smoke
    .venv/bin/python bench/dag_scale.py --jobs-target 20000 --profile   # + where the time goes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrlbench import config as cb_config  # noqa: E402

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
RESULTS = ROOT / "bench" / "results"

# The paper-scale sweep added to config.yaml's methods ({method: {param: values}}).
# sd_template keeps 7.5, which other methods reference as sd_template/guidance_scale=7.5.
SWEEPS = {
    "sd_template": {"guidance_scale": [3.0, 5.0, 7.5, 10.0, 12.5]},
    "sd_llm": {"guidance_scale": [5.0, 7.5, 10.0]},
    "cn_template": {"controlnet_conditioning_scale": [0.5, 0.75, 1.0, 1.25], "guidance_scale": [7.5, 9.0]},
    "cn_llm": {"controlnet_conditioning_scale": [0.5, 0.75, 1.0, 1.25], "guidance_scale": [7.5, 9.0]},
    "cn_retrieval": {"controlnet_conditioning_scale": [0.5, 0.75, 1.0, 1.25], "guidance_scale": [7.5, 9.0]},
    "sdedit": {"strength": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]},
    "gradop": {"strength": [0.6, 0.8], "grad_steps_per_iter": [2, 4, 6]},
}

# Wrapper: runs argv[2:], writes {returncode, wall_s, peak_rss_mib} of that child to argv[1].
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
json.dump({"returncode": code, "wall_s": round(wall, 3), "peak_rss_mib": round(peak, 1)}, open(sys.argv[1], "w"))
"""


from machine import machine_info  # noqa: E402  (bench/machine.py)

def sweep_config(n_shards: int) -> dict:
    """config.yaml with SWEEPS, n_shards, and every reference to a now-swept method
    ('method' alone) pinned to that method's first parameter set."""
    config = copy.deepcopy(yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text()))
    config["n_shards"] = n_shards
    for method, sweep in SWEEPS.items():
        config["methods"][method]["sweep"] = sweep

    def pin(ref: str) -> str:
        if "/" in ref:
            return ref
        return f"{ref}/{next(iter(cb_config.method_paramsets(config, ref)))}"

    for method in config["methods"].values():
        if "base" in method:
            method["base"] = pin(method["base"])
        if "candidates" in method:
            method["candidates"] = [pin(ref) for ref in method["candidates"]]
    for rows in config.get("report", {}).get("papers", {}).values():
        for row, ref in rows.items():  # a row may map per dataset: {dataset: ref}
            rows[row] = {dataset: pin(r) for dataset, r in ref.items()} if isinstance(ref, dict) else pin(ref)
    return config


def snakemake(workdir: Path, *args: str, measure: bool = False) -> tuple[dict, str]:
    """Run snakemake in workdir; return ({returncode, wall_s[, peak_rss_mib]}, stdout + stderr)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    if not measure:
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        stats = {"returncode": result.returncode, "wall_s": round(time.perf_counter() - start, 3)}
    else:
        with tempfile.NamedTemporaryFile("r", suffix=".json") as stats_file:
            result = subprocess.run([sys.executable, "-c", MEASURE, stats_file.name, *cmd],
                                    capture_output=True, text=True)
            stats = json.load(open(stats_file.name))
    output = result.stdout + result.stderr
    if stats["returncode"] != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{output[-4000:]}")
    return stats, output


def job_counts(output: str) -> dict[str, int]:
    """{rule: count, ..., "total": n} from the first "Job stats:" table; {} when nothing to do."""
    if "Job stats:" not in output:
        return {}
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


# Snakemake functions whose cumulative time the profile reports: (label, pstats pattern).
# Each runs once per job or more; their shares say where a job's bookkeeping goes.
PROFILED_PHASES = [
    ("DAG build (all of it)", "workflow.py", "_build_dag"),
    ("  creating jobs: inputs expanded (input functions included)", "rules.py", "expand_input"),
    ("  params expanded (params functions included)", "rules.py", "expand_params"),
    ("  per-job script check (reads the script source)", "script/__init__.py", "get_source"),
    ("dry-run listing of every job (resources evaluated)", "job_scheduler.py", "schedule"),
    ("  resources evaluated", "rules.py", "expand_resources"),
    ("function signatures inspected (inspect.signature, every call)", "common/__init__.py", "get_function_params"),
]


def is_project_code(filename: str) -> bool:
    path = Path(filename)
    return (path.name == "Snakefile" or path.suffix == ".smk" or
            (ROOT / "ctrlbench") in path.parents) and ROOT in path.parents


def profile_breakdown(profile: Path) -> dict:
    """Shares of the profiled dry run: PROFILED_PHASES, and the project's own code (the
    cumulative time of project functions on calls that come from outside the project,
    so nested project calls are not counted twice)."""
    stats = pstats.Stats(str(profile)).stats
    total = max(ct for _, _, _, ct, _ in stats.values())
    phases = {}
    for label, file_suffix, name in PROFILED_PHASES:
        phases[label] = round(sum(ct for (filename, _, func), (_, _, _, ct, _) in stats.items()
                                  if func == name and filename.endswith(file_suffix)), 2)
    project = sum(edge[3] for (filename, _, _), (_, _, _, _, callers) in stats.items() if is_project_code(filename)
                  for caller, edge in callers.items() if not is_project_code(caller[0]))
    return {"profiled_total_s": round(total, 2), "phases_s": phases, "project_code_s": round(project, 2),
            "project_code_share": round(project / total, 3)}


def run_items(workdir: Path, config: dict) -> dict:
    """Toy data and the `items` checkpoint of every dataset, for real."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    targets = [f"{config['results_dir']}/data/{dataset}/items.csv" for dataset in config["datasets"]]
    stats, _ = snakemake(workdir, *targets)
    return stats


def listed_jobs(output: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, inputs, outputs) of every job a non-quiet dry run printed."""
    jobs = []
    for line in output.splitlines():
        header = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if header:
            jobs.append((header.group(1), [], []))
            continue
        field = re.match(r"^    (input|output): (.*)$", line)
        if field and jobs:
            jobs[-1][1 if field.group(1) == "input" else 2].extend(field.group(2).split(", "))
    return jobs


def fake_outputs(workdir: Path, jobs: list) -> int:
    """Create every job's outputs, empty, with mtimes increasing along the DAG (a job's
    outputs are 1 s newer than the newest output it reads). Returns the file count.

    An output without a file suffix is a directory in this workflow (toy datasets, tiny
    models, image shards, report folders); like `snakemake --touch`, its mtime is
    carried by a .snakemake_timestamp file inside."""
    producer = {path: i for i, (_, _, outputs) in enumerate(jobs) for path in outputs}
    depth: dict[int, int] = {}

    def job_depth(i: int) -> int:
        if i not in depth:
            depth[i] = 1 + max((job_depth(producer[p]) for p in jobs[i][1] if p in producer), default=0)
        return depth[i]

    paths = []
    for i, (_, _, outputs) in enumerate(jobs):
        for output in outputs:
            path = workdir / output
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
                path = path / ".snakemake_timestamp"
                path.touch()
            paths.append((path, job_depth(i)))
    base = time.time() + 1
    for path, level in paths:  # after creating them all, so no later mkdir moves an mtime
        os.utime(path, (base + level, base + level))
    return len(paths)


def print_profile(profile: dict) -> None:
    total = profile["profiled_total_s"]
    print(f"\nprofiled dry run: {total:.1f} s under cProfile", flush=True)
    print("| where the time goes | share of the profiled run |\n|---|---:|")
    for label, seconds in profile["phases_s"].items():
        print(f"| {label} | {100 * seconds / total:.0f}% |")
    print(f"| this project's code (input, params and helper functions) | {100 * profile['project_code_share']:.0f}% |\n",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-target", type=int, default=20000, help="about this many jobs in the DAG")
    parser.add_argument("--shards", type=int, help="use this many shards (skips the calibration)")
    parser.add_argument("--repeats", type=int, default=3, help="timed dry runs (the median is reported)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one dry run (cProfile) and report where its time goes")
    parser.add_argument("--workdir", type=Path, help="keep the working directory here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dag_scale.json")
    args = parser.parse_args()

    record = {"benchmark": "dag_scale", "machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "sweeps": SWEEPS}
    with tempfile.TemporaryDirectory(prefix="dag_scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        n_shards = args.shards
        if n_shards is None:  # jobs = fixed + per_shard * n_shards
            totals = {}
            for n in (1, 2):
                run_items(workdir, sweep_config(n))
                totals[n] = job_counts(snakemake(workdir, "-n", "--quiet", "rules")[1])["total"]
            per_shard, fixed = totals[2] - totals[1], 2 * totals[1] - totals[2]
            n_shards = max(1, round((args.jobs_target - fixed) / per_shard))
            record["calibration"] = {"jobs_at_1_shard": totals[1], "jobs_at_2_shards": totals[2],
                                     "jobs_per_shard": per_shard, "fixed_jobs": fixed}
            print(f"calibration: {per_shard} jobs per shard + {fixed} -> {n_shards} shards", flush=True)
        record["n_shards"] = n_shards
        record["items_setup"] = run_items(workdir, sweep_config(n_shards))
        print(f"toy data + items at {n_shards} shards (setup, not a measurement): "
              f"{record['items_setup']['wall_s']:.1f} s", flush=True)

        runs = []
        for _ in range(args.repeats):
            stats, output = snakemake(workdir, "-n", "--quiet", "rules", measure=True)
            runs.append(stats)
            print(f"dry run (-n --quiet rules): {stats['wall_s']:.1f} s, peak RSS {stats['peak_rss_mib']:.0f} MiB",
                  flush=True)
        record["job_counts"] = job_counts(output)
        record["dry_run"] = {"runs": runs, "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                             "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
        print(f"jobs in the DAG: {record['job_counts'].get('total')}", flush=True)

        if args.profile:
            profile = workdir / "dry_run.prof"
            command = [sys.executable, "-m", "cProfile", "-o", str(profile), str(SNAKEMAKE),
                       "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                       "-n", "--quiet", "rules"]
            subprocess.run(command, check=True, capture_output=True)
            record["profile"] = profile_breakdown(profile)
            print_profile(record["profile"])

        stats, output = snakemake(workdir, "-n", measure=True)
        jobs = listed_jobs(output)
        record["dry_run_listing"] = {**stats, "jobs_listed": len(jobs), "output_mib": round(len(output) / 2**20, 1)}
        print(f"dry run printing every job (-n): {stats['wall_s']:.1f} s, peak RSS {stats['peak_rss_mib']:.0f} MiB, "
              f"{len(jobs)} jobs listed", flush=True)

        start = time.perf_counter()
        n_files = fake_outputs(workdir, jobs)
        record["noop_setup"] = {"outputs_created": n_files, "seconds": round(time.perf_counter() - start, 1)}
        runs = []
        for _ in range(args.repeats):
            stats, output = snakemake(workdir, "-n", "--quiet", "rules", measure=True)
            left = job_counts(output).get("total", 0)
            runs.append({**stats, "jobs_left": left, "nothing_to_be_done": "Nothing to be done" in output})
            print(f"no-op rerun (-n --quiet rules, all {n_files} outputs up to date): {stats['wall_s']:.1f} s, "
                  f"peak RSS {stats['peak_rss_mib']:.0f} MiB, jobs left {left}", flush=True)
        record["noop"] = {"runs": runs, "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                          "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                          "note": "outputs created empty without metadata records: a lower bound"}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    total = record["job_counts"].get("total")
    noop = record["noop"]
    print("\n| jobs | shards | DAG build (`-n`): s | DAG build: peak RSS MiB | dry run with listing: s "
          "| no-op rerun: s | no-op: peak RSS MiB | nothing to be done |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {total:,} | {n_shards} | {record['dry_run']['median_wall_s']:.1f} | "
          f"{record['dry_run']['max_peak_rss_mib']:.0f} | {record['dry_run_listing']['wall_s']:.1f} | "
          f"{noop['median_wall_s']:.1f} | {noop['max_peak_rss_mib']:.0f} | "
          f"{'yes' if all(r['nothing_to_be_done'] for r in noop['runs']) else 'no'} |")
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
