"""Is mnv3-budget's timing stage repeatable? Times the grid's int8 files twice,
in two separate sittings, and compares the fronts they give.

    python benchmarks/budget_timing.py --config configs/finetune.yaml \
        --set model.init_from=null --json

The files are converted once (into --work_dir, kept for a rerun); each sitting
times all of them in turns, as the search does. Prints the front of each
sitting, fastest first, whether the two agree in members and order, and how
far each candidate's two latencies lie apart.
"""

from __future__ import annotations

import json
import os
import tempfile

from mnv3 import cli
from mnv3 import config as config_lib
from mnv3 import tasks
from mnv3.budget import front, timing
from mnv3.budget.candidates import grid


def main(argv) -> int:
    parser = cli.parser(__doc__)
    cli.add_config_flags(parser, "the search's config", "budget.alphas=[0.5]", required=True)
    parser.add_argument("--work_dir", help="where the converted files go (default: a "
                        "temporary folder)")
    parser.add_argument("--json", action="store_true")

    def go():
        args = parser.parse_args(argv)
        cfg = config_lib.load(args.config, args.set)
        source = tasks.get(cfg).load_source(seed=cfg.runtime.seed or 0)
        candidates = grid(cfg)
        work = args.work_dir or tempfile.mkdtemp(prefix="budget-timing-")
        sittings = []
        for _ in range(2):
            done = os.path.join(work, timing.TIMINGS)
            if os.path.exists(done):
                os.remove(done)  # time again; the converted files are kept
            rows = timing.measure(cfg, candidates, source, work)
            sittings.append(rows)
        fronts = [[r["name"] for r in sorted(front.front(list(rows.values())),
                                             key=lambda r: r["latency_ms"])]
                  for rows in sittings]
        timed = [n for n, r in sittings[0].items() if "latency_ms" in r]
        apart = {n: round(abs(sittings[1][n]["latency_ms"] / sittings[0][n]["latency_ms"]
                              - 1), 4) for n in timed}
        result = {"candidates": len(candidates), "timed": len(timed),
                  "threads": cfg.export.threads, "runs": cfg.export.latency_runs,
                  "front_1": fronts[0], "front_2": fronts[1],
                  "same_front_same_order": fronts[0] == fronts[1],
                  "median_relative_difference": sorted(apart.values())[len(apart) // 2],
                  "max_relative_difference": max(apart.values()),
                  "latency_ms": {n: [s[n]["latency_ms"] for s in sittings] for n in timed}}
        print(json.dumps(result, indent=None if args.json else 1))
    return cli.run_command(go)


if __name__ == "__main__":
    cli.main(main)
