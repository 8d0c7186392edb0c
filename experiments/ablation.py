"""The paper's ablation (Table 4) on the synthetic set: four supervision variants x several seeds.

  python experiments/ablation.py --out_dir runs/ablation

Trains every (variant, seed) with train.py in its own process (workdir out_dir/<variant>_seed<k>, same
config except config.supervision and the seeds), evaluates it, and writes out_dir/ablation.json,
ablation.md (mean and standard deviation over seeds of MPJPE, PA-MPJPE and the stage-1 network's 2.5D
voxel error, with the trunk-gradient shares at the end of stage 1) and ablation.png. Runs that finished
(eval/metrics.json exists) are kept, so re-running the command resumes the study; an interrupted run
resumes from its own checkpoint. The variants keep the network and data; only the stage-1 loss weights
change (training/losses.SUPERVISION):
  baseline  L_coord only               jh     + joint heatmaps
  jh_bh     + bone heatmaps            full   + depth-centric volume and ordinal depth

The defaults are the study in docs/ablation.md (about 70 minutes on 2 CPU cores); --config, --stage1_steps,
--stage2_steps and --set make other ones, e.g. the test's tiny run:
  python experiments/ablation.py --out_dir /tmp/abl --config configs/tiny.py --seeds 0 \\
      --stage1_steps 2 --stage2_steps 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "jh", "jh_bh", "full")
TERMS = ("bone", "joint", "volume_3d", "depth", "coord")
METRICS = (("mpjpe", "MPJPE (mm)"), ("pa_mpjpe", "PA-MPJPE (mm)"), ("voxel_error", "2.5D voxel error"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out_dir", required=True, help="folder for the runs' workdirs and the table")
  p.add_argument("--config", default="configs/synthetic.py", help="the config every run starts from")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (config.seed and config.data.seed)")
  p.add_argument("--stage1_steps", type=int, default=1600, help="stage-1 steps of each run (0: the config's)")
  p.add_argument("--stage2_steps", type=int, default=1500, help="stage-2 steps of each run (0: the config's)")
  p.add_argument("--data_dir", default="", help="dataset folder shared by the runs (default out_dir/data)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra config override for every run, e.g. --set loss_normalization=mean")
  args = p.parse_args(argv)
  args.variants = [v for v in args.variants.split(",") if v]
  bad = [v for v in args.variants if v not in VARIANTS]
  if bad:
    p.error(f"--variants: unknown {bad}; choose from {VARIANTS}")
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
  except ValueError:
    p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
  for item in args.set:
    if "=" not in item:
      p.error(f"--set: expected KEY=VALUE, got {item!r}")
  return args


def run_overrides(args: argparse.Namespace, variant: str, seed: int, data_dir: pathlib.Path) -> list[str]:
  """train.py's --config.* flags for one run."""
  flags = [f"--config.supervision={variant}", f"--config.seed={seed}", f"--config.data.seed={seed}",
           f"--config.data.train_3d.data_dir={data_dir}", f"--config.data.eval.data_dir={data_dir}",
           "--config.progress_bar=False",
           # The study reports each term's share of the trunk gradient, whatever the config's default.
           "--config.trunk_gradients.enabled=True"]
  for stage, steps in ((1, args.stage1_steps), (2, args.stage2_steps)):
    if steps:
      # The config's step decay stays at the same fraction of the stage (scaled_decay).
      flags.append(f"--config.stage{stage}.num_steps={steps}")
  return flags + [f"--config.{item}" for item in args.set]


def load_config(config_path: str):
  """The ConfigDict of a config file (its get_config())."""
  spec = importlib.util.spec_from_file_location("ablation_config", ROOT / config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def scaled_decay(config, args: argparse.Namespace) -> list[str]:
  """--config.stageN.decay_epochs flags that keep each decay at the config's fraction of a shortened stage.

  Needs the config's stage length in steps (stageN.num_steps); a stage given in epochs keeps its decay.
  """
  flags = []
  for stage, new_steps in ((1, args.stage1_steps), (2, args.stage2_steps)):
    scfg = config[f"stage{stage}"]
    if not new_steps or not scfg.num_steps or not scfg.decay_epochs:
      continue
    decay = ",".join(f"{e * new_steps / scfg.num_steps:.6g}" for e in scfg.decay_epochs)
    flags.append(f"--config.stage{stage}.decay_epochs=({decay},)")
  return flags


def train_one(args: argparse.Namespace, workdir: pathlib.Path, overrides: list[str]) -> float:
  """Runs train.py for one workdir (resuming if it has checkpoints); returns wall seconds."""
  workdir.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ)
  # One compilation cache for the study: the seeds of a variant compile the same programs.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(args.out_dir).resolve() / "jax_cache"))
  cmd = [sys.executable, str(ROOT / "train.py"), f"--config={args.config}", f"--workdir={workdir}", *overrides]
  t0 = time.time()
  with open(workdir / "train.log", "a", encoding="utf-8") as log:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
  if proc.returncode != 0:
    raise SystemExit(f"ablation: {workdir.name} failed (exit {proc.returncode}); see {workdir / 'train.log'}")
  return time.time() - t0


def last_trunk_shares(workdir: pathlib.Path) -> dict[str, float]:
  """The last stage-1 trunk_grad_share/* values in workdir/metrics.jsonl ({} if none were logged)."""
  shares: dict[str, float] = {}
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return shares
  for line in path.read_text(encoding="utf-8").splitlines():
    record = json.loads(line)
    if any(k.startswith("trunk_grad_share/") for k in record):
      shares = {k.split("/", 1)[1]: float(v) for k, v in record.items() if k.startswith("trunk_grad_share/")}
  return shares


def summarize(runs: list[dict]) -> dict[str, dict]:
  """{variant: {metric: (mean, sd, n), 'shares': {term: mean share}}} over the seeds of each variant."""
  table = {}
  for variant in VARIANTS:
    rows = [r for r in runs if r["variant"] == variant]
    if not rows:
      continue
    entry = {}
    for key, _ in METRICS:
      values = np.array([r["metrics"][key] for r in rows if key in r["metrics"]], np.float64)
      entry[key] = ((float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))
                    if len(values) else None)
    entry["shares"] = {t: float(np.mean([r["shares"].get(t, 0.0) for r in rows])) for t in TERMS}
    table[variant] = entry
  return table


def markdown(table: dict[str, dict], args: argparse.Namespace) -> str:
  head = ("| variant | " + " | ".join(label for _, label in METRICS)
          + " | trunk gradient share at the end of stage 1 (bone/joint/volume/depth/coord, %) |")
  lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
  for variant, entry in table.items():
    cells = []
    for key, _ in METRICS:
      m = entry[key]
      cells.append("-" if m is None else f"{m[0]:.2f} ± {m[1]:.2f}")
    shares = "/".join(f"{100 * entry['shares'][t]:.0f}" for t in TERMS)
    lines.append(f"| {variant} | " + " | ".join(cells) + f" | {shares} |")
  seeds = ",".join(map(str, args.seeds))
  lines.append("")
  lines.append(f"Mean ± standard deviation over seeds {seeds}; config {args.config}, stage 1 "
               f"{args.stage1_steps or 'config'} steps, stage 2 {args.stage2_steps or 'config'} steps"
               + (f", overrides {' '.join(args.set)}" if args.set else "") + ".")
  return "\n".join(lines) + "\n"


def plot(table: dict[str, dict], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
  names = list(table)
  for ax, (key, label) in zip(axes, METRICS):
    means = [table[v][key][0] if table[v][key] else math.nan for v in names]
    sds = [table[v][key][1] if table[v][key] else 0.0 for v in names]
    ax.bar(names, means, yerr=sds, capsize=4, color="#4c72b0")
    ax.set_title(label)
    finite = [m for m in means if math.isfinite(m)]
    if finite:
      ax.set_ylim(0.9 * min(finite) - max(sds), max(m + s for m, s in zip(finite, sds)) * 1.03)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
  args = parse_args(argv)
  out = pathlib.Path(args.out_dir).resolve()
  out.mkdir(parents=True, exist_ok=True)
  data_dir = pathlib.Path(args.data_dir).resolve() if args.data_dir else out / "data"
  decay = scaled_decay(load_config(args.config), args)
  runs = []
  for seed in args.seeds:      # seed-major: a study cut short still has every variant at the first seeds
    for variant in args.variants:
      workdir = out / f"{variant}_seed{seed}"
      metrics_path = workdir / "eval" / "metrics.json"
      seconds = None
      if not metrics_path.exists():
        print(f"ablation: training {workdir.name}", flush=True)
        seconds = train_one(args, workdir, run_overrides(args, variant, seed, data_dir) + decay)
      metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
      runs.append({"variant": variant, "seed": seed, "workdir": str(workdir), "seconds": seconds,
                   "metrics": {k: metrics[k] for k, _ in METRICS if k in metrics},
                   "mean_pose_mpjpe": metrics.get("mean_pose_mpjpe"), "shares": last_trunk_shares(workdir)})
      print(f"ablation: {workdir.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in runs[-1]["metrics"].items()),
            flush=True)
  table = summarize(runs)
  (out / "ablation.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                                 "runs": runs, "table": table}, indent=2), encoding="utf-8")
  text = markdown(table, args)
  (out / "ablation.md").write_text(text, encoding="utf-8")
  plot(table, out / "ablation.png")
  print(text)
  return table


if __name__ == "__main__":
  main()
