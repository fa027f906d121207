"""The most accurate model for a latency budget (`mnv3-budget`).

`run(cfg, budget_ms, out_dir)` answers the paper's question for the user's own
data and recipe in three stages:
1. timing.py: every candidate of the `budget.*` grid (variant x minimalistic x
   alpha x resolution) exported as int8 and timed on the target runtime;
2. front.py: the candidates on the latency / multiply-add front within the
   budget trained with the user's recipe, the same number of epochs each, and
   exported (int8 accuracy on the eval data);
3. the table, the picture and the winning config, ready for train.py.

out_dir keeps every stage's work: a rerun (after a kill, or with another
budget) converts, times and trains nothing twice, and resumes a half-trained
candidate where it stopped, so it ends with the same answer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import yaml

from mnv3 import config as config_lib
from mnv3 import tasks
from mnv3.budget import front, timing
from mnv3.budget.candidates import candidate_of, given, grid
from mnv3.config import Config
from mnv3.console import say
from mnv3.errors import UserError
from mnv3.export import pipeline as export
from mnv3.files import Lock, write_atomically
from mnv3.results import plots
from mnv3.run_dir import RunDir
from mnv3.training import run as train

SEARCH_CONFIG = "search.yaml"
# Keys a finished search's work does not depend on: they may change on a rerun.
FREE_KEYS = {("budget", "max_trained")}


class Paths:
    """Where each stage's work and each result goes inside out_dir."""

    def __init__(self, root: str):
        self.config = os.path.join(root, SEARCH_CONFIG)
        self.timing = os.path.join(root, "timing")  # converted files, timings.json
        self.runs = os.path.join(root, "runs")  # a run directory per trained candidate
        self.table = os.path.join(root, "budget.md")
        self.json = os.path.join(root, "budget.json")
        self.png = os.path.join(root, "budget.png")
        self.winner = os.path.join(root, "winner.yaml")
        self.lock = os.path.join(root, ".budget.lock")

    def run(self, name: str) -> str:
        return os.path.join(self.runs, name)

    def report(self, name: str) -> str:
        """A trained candidate's export report: there once it is done."""
        return os.path.join(RunDir(self.run(name)).export, "report.json")


def run(cfg: Config, out_dir: str, budget_ms: float | None = None,
        budget_ratio: float | None = None) -> dict:
    """The search, for a budget in milliseconds or as a share of the config as
    given's own int8 latency (`budget_ratio`: timed in the same sitting as every
    candidate, so it holds however fast the machine runs that day); returns
    what budget.json holds."""
    if (budget_ms is None) == (budget_ratio is None):
        raise UserError("give one budget: --budget_ms or --budget_ratio")
    for flag, value in (("--budget_ms", budget_ms), ("--budget_ratio", budget_ratio)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} {value:g}: must be more than 0")
    started = time.perf_counter()
    paths = Paths(out_dir)
    task = tasks.get(cfg)
    source = task.load_source(seed=cfg.runtime.seed or 0)  # bad data fails here
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    with Lock(paths.lock, "mnv3-budget", "--out_dir"):
        _check_same_search(cfg, paths.config)
        candidates = grid(cfg)
        budget = f"{budget_ms:g} ms" if budget_ms else f"{budget_ratio:g} x the config as given"
        say(f"budget {budget}: {len(candidates)} candidates ({_grid_text(cfg)}, and the "
            "config as given)")
        rows = timing.measure(cfg, candidates, source, paths.timing)
        ordered = [{**dataclasses.asdict(c), **rows[c.name]} for c in candidates]
        for row in front.front(ordered):
            row["on_front"] = True
        for row in ordered:
            row["given"] = row["name"] == given(cfg).name
        as_given = next(r for r in ordered if r["given"])
        if budget_ratio is not None:
            budget_ms = _share_of_given(as_given, budget_ratio)
        timed_s = time.perf_counter() - started
        chosen = _to_train(ordered, as_given, cfg, budget_ms)
        metric = task.export.headline[0][0]
        _train_all(cfg, chosen, paths, metric)
        for row in ordered:  # candidates an earlier search (another budget) trained
            if row not in chosen and "error" not in row:
                _read_scores(row, paths, metric)
        best = front.winner(ordered, budget_ms)
        if best:
            best["winner"] = True
        result = {"budget_ms": round(budget_ms, 4), "budget_ratio": budget_ratio,
                  "metric": task.export.headline[0][1],
                  "epochs_each": _epochs(cfg), "candidates": len(candidates),
                  "timed": sum(r.get("latency_ms") is not None for r in ordered),
                  "trained": len(chosen), "timing_stage_s": round(timed_s),
                  "wall_s": round(time.perf_counter() - started),
                  "winner": best and best["name"],
                  "given": as_given["name"], "rows": ordered}
        _write_outputs(cfg, result, paths, best)
    return result


def _grid_text(cfg: Config) -> str:
    b = cfg.budget
    return " x ".join(f"{len(v)} {name}" for name, v in (
        ("variants", b.variants), ("minimalistic", b.minimalistic),
        ("alphas", b.alphas), ("sizes", b.image_sizes)))


def _epochs(cfg: Config) -> int:
    return cfg.budget.epochs or cfg.train.epochs


def _check_same_search(cfg: Config, path: str) -> None:
    """out_dir holds one search: its work is only reused for the same config."""
    ours = config_lib.to_dict(cfg)
    if not os.path.exists(path):
        config_lib.save(cfg, path)
        return
    with open(path, encoding="utf-8") as f:
        theirs = yaml.safe_load(f) or {}
    for section, keys in ours.items():
        for key, value in keys.items():
            if (section, key) not in FREE_KEYS and theirs.get(section, {}).get(key) != value:
                raise UserError(
                    f"{path}: this folder holds a search with {section}.{key}: "
                    f"{theirs.get(section, {}).get(key)!r}, not {value!r}; use another "
                    "--out_dir (or the same config)")


def _share_of_given(as_given: dict, ratio: float) -> float:
    if as_given.get("latency_ms") is None:
        raise UserError(f"--budget_ratio: the config as given ({as_given['name']}) could "
                        f"not be timed ({as_given.get('error')}); give --budget_ms")
    say(f"budget: {ratio:g} x {as_given['latency_ms']} ms (the config as given) = "
        f"{ratio * as_given['latency_ms']:.3f} ms")
    return ratio * as_given["latency_ms"]


def _to_train(rows: list[dict], as_given: dict, cfg: Config, budget_ms: float
              ) -> list[dict]:
    """The rows to train: the front's best within the budget, and the config
    as given (for comparison, whatever its latency)."""
    timed = [r for r in rows if r.get("latency_ms") is not None]
    if not timed:
        raise UserError("no candidate could be built and timed; see "
                        f"{timing.TIMINGS} in the timing folder for each reason")
    chosen = front.to_train(rows, budget_ms, cfg.budget.max_trained)
    if not chosen:
        fastest = min(timed, key=lambda r: r["latency_ms"])
        raise UserError(f"budget {budget_ms:g} ms: no candidate runs that fast here; "
                        f"the fastest, {fastest['name']}, takes {fastest['latency_ms']} ms")
    if as_given not in chosen and "error" not in as_given:
        chosen.append(as_given)
    return chosen


def _train_all(cfg: Config, chosen: list[dict], paths: Paths, metric: str) -> None:
    """Trains and exports each chosen row's candidate in out_dir/runs/<name>
    (an ordinary run directory: train.py and export_tflite.py work on it), and
    puts its float and int8 scores on the row."""
    epochs = _epochs(cfg)
    started, spent, done_madds = time.perf_counter(), 0.0, 0
    for i, row in enumerate(chosen, 1):
        left = ""
        if done_madds:  # an epoch's time grows about with multiply-adds
            rate = spent / done_madds
            waiting = [r for r in chosen[i - 1:]
                       if not os.path.exists(paths.report(r["name"]))]
            left = (f", about {sum(r['madds'] for r in waiting) * rate / 60:.0f} "
                    "min of training left")
        say(f"training {i}/{len(chosen)}: {row['name']} ({epochs} epochs, "
            f"{row['latency_ms']} ms), {(time.perf_counter() - started) / 60:.1f} min "
            f"so far{left}")
        run_dir = paths.run(row["name"])
        c_cfg = candidate_of(row).config(cfg, epochs)
        if not os.path.exists(paths.report(row["name"])):
            try:
                train(c_cfg, run_dir)
                keras.backend.clear_session()
                export.run(dataclasses.replace(
                    c_cfg, export=dataclasses.replace(c_cfg.export, quant=["int8"])),
                    run_dir)
            except UserError as e:  # this candidate's failure, not the search's
                row["error"] = f"training or export failed: {e}"
                say(f"{row['name']}: {row['error']}")
                continue
            finally:
                keras.backend.clear_session()
        _read_scores(row, paths, metric)
        # The epochs' own seconds, whether trained now or before an interruption.
        spent += sum(r.get("seconds", 0) for r in RunDir(run_dir).read_metrics())
        done_madds += row["madds"]


def _read_scores(row: dict, paths: Paths, metric: str) -> None:
    """Puts a trained candidate's float and int8 scores (its export report's)
    on its row, if it has them."""
    path = paths.report(row["name"])
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            scores = {r["mode"]: r[metric] for r in json.load(f)["rows"]}
        row.update(accuracy=scores["keras"], int8=scores["int8"],
                   run_dir=paths.run(row["name"]))


def _write_outputs(cfg: Config, result: dict, paths: Paths, best: dict | None) -> None:
    title = (f"{result['metric']} within {result['budget_ms']:g} ms: "
             + (f"{best['name']} wins" if best else "no trained candidate within it"))
    plots.budget_png(result["rows"], result["budget_ms"], paths.png, result["metric"], title)
    table = markdown_table(result)
    write_atomically(paths.table, table + "\n")
    write_atomically(paths.json, json.dumps(result, indent=1))
    if best:
        winning = candidate_of(best).config(cfg)
        header = (f"# mnv3-budget: the most accurate candidate within {result['budget_ms']:g} ms "
                  f"({best['name']}: int8 {result['metric']} {100 * best['int8']:.1f}% after "
                  f"{result['epochs_each']} epochs, {best['latency_ms']} ms).\n"
                  f"# Train it: python train.py --config {paths.winner} --model_dir runs/NAME\n")
        write_atomically(paths.winner, header + yaml.safe_dump(
            config_lib.to_dict(winning), sort_keys=False))
    say(table)
    say(f"wrote {paths.table}, {paths.png}"
        + (f" and {paths.winner}" if best else "") + f" in {result['wall_s'] / 60:.1f} min")


def markdown_table(result: dict) -> str:
    """A line per timed candidate, fastest first; then the candidates that were
    not timed, one line per reason (a grid's untrainable networks share one)."""
    metric = result["metric"]
    share = (f" ({result['budget_ratio']:g} x the config as given, timed beside it)"
             if result.get("budget_ratio") else "")
    lines = [f"Budget {result['budget_ms']:g} ms{share}; trained candidates got "
             f"{result['epochs_each']} epochs each; latency of the int8 file.", "",
             f"| candidate | latency (ms) | MAdds (M) | params | int8 size (MB) | front | "
             f"{metric} | int8 {metric} | note |",
             "| --- | ---: | ---: | ---: | ---: | :-: | ---: | ---: | --- |"]
    timed = sorted((r for r in result["rows"] if r.get("latency_ms") is not None),
                   key=lambda r: (r["latency_ms"], r["name"]))
    for r in timed:
        notes = [n for n, on in (("winner", r.get("winner")), ("as given", r.get("given")))
                 if on]
        if r["latency_ms"] > result["budget_ms"]:
            notes.append("over budget")
        if "error" in r:  # timed, but its training or export failed
            notes.append(r["error"])
        cells = [r["name"], _cell(r, "latency_ms", "{:.3f}"), _cell(r, "madds", "{:.1f}", 1e-6),
                 _cell(r, "params", "{:,d}"), _cell(r, "size_mb", "{:.2f}"),
                 "yes" if r.get("on_front") else "", _cell(r, "accuracy", "{:.1f}%", 100),
                 _cell(r, "int8", "{:.1f}%", 100), "; ".join(notes)]
        lines.append("| " + " | ".join(cells) + " |")
    by_reason: dict[str, list[str]] = {}
    for r in result["rows"]:
        if r.get("latency_ms") is None:
            by_reason.setdefault(r.get("error", "not timed"), []).append(r["name"])
    if by_reason:
        lines += ["", "Not timed:", "", "| candidates | why |", "| --- | --- |"]
        lines += [f"| {', '.join(names)} | {reason} |" for reason, names in by_reason.items()]
    return "\n".join(lines)


def _cell(row: dict, key: str, fmt: str, scale: float = 1) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value * scale if scale != 1 else value)
