"""What starting from pretrained weights buys: train.py on the same photos from
scratch, head only, and head then whole network, and one JSON line per run
(wall seconds of the whole command, epochs, best and last eval top-1).

    python benchmarks/finetune_gain.py --pretrained runs/imagenette_small \
        --out runs/finetune_gain --epochs scratch=40,head_only=60,head_then_whole=40

Give each run the epochs that fit one wall-time budget: a head-only epoch costs
a fraction of a full one. Extra `--set` overrides apply to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "finetune.yaml")


def variants(pretrained: str, epochs: dict[str, int]) -> dict[str, list[str]]:
    """The three ways to train, as overrides of configs/finetune.yaml."""
    return {
        "scratch": ["model.init_from=null", "train.freeze_backbone_epochs=0",
                    "train.backbone_lr_scale=1.0", f"train.epochs={epochs['scratch']}"],
        "head_only": [f"model.init_from={pretrained}",
                      f"train.freeze_backbone_epochs={epochs['head_only']}",
                      f"train.epochs={epochs['head_only']}"],
        "head_then_whole": [f"model.init_from={pretrained}",
                            f"train.epochs={epochs['head_then_whole']}"],
    }


def run(name: str, overrides: list[str], out: str) -> dict:
    model_dir = os.path.join(out, name)
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG,
            "--model_dir", model_dir]
    for item in overrides:
        args += ["--set", item]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name}: train.py failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return {"run": name, "wall_seconds": round(wall, 1), "epochs": records[-1]["epoch"],
            "best_eval_top1": max(r["eval_top1"] for r in records),
            "last_eval_top1": records[-1]["eval_top1"],
            "eval_images": records[-1]["eval_images"], "model_dir": model_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True,
                        help="model.init_from for the two fine-tuned runs")
    parser.add_argument("--out", required=True, help="parent of the three run directories")
    parser.add_argument("--epochs", default="scratch=20,head_only=20,head_then_whole=20",
                        help="epochs per run, NAME=N,...")
    parser.add_argument("--only", default=None, help="comma-separated runs to do")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    flags = parser.parse_args()
    epochs = {k: int(v) for k, v in (item.split("=") for item in flags.epochs.split(","))}
    chosen = flags.only.split(",") if flags.only else None
    for name, overrides in variants(flags.pretrained, epochs).items():
        if chosen is None or name in chosen:
            print(json.dumps(run(name, overrides + flags.set, flags.out)), flush=True)


if __name__ == "__main__":
    main()
