"""Stage 2: which timed candidates are worth training. Multiply-adds stand in
for capacity before anything is trained: a candidate is dominated when another
is at least as fast and at least as large, and better in one of the two, so
it could only win by luck. Of the front, the members within the budget with
the most multiply-adds are trained (the fast end of the front is the budget's
poorest use)."""

from __future__ import annotations


def dominates(a: dict, b: dict) -> bool:
    return (a["latency_ms"] <= b["latency_ms"] and a["madds"] >= b["madds"]
            and (a["latency_ms"] < b["latency_ms"] or a["madds"] > b["madds"]))


def front(rows: list[dict]) -> list[dict]:
    """The rows no other row dominates (rows without a latency take no part)."""
    timed = [r for r in rows if r.get("latency_ms") is not None]
    return [r for r in timed if not any(dominates(o, r) for o in timed)]


def to_train(rows: list[dict], budget_ms: float, most: int) -> list[dict]:
    """The front's members within the budget with the most multiply-adds, at
    most `most`, fastest first."""
    within = [r for r in front(rows) if r["latency_ms"] <= budget_ms]
    chosen = sorted(within, key=lambda r: r["madds"], reverse=True)[:most]
    return sorted(chosen, key=lambda r: r["latency_ms"])


def winner(rows: list[dict], budget_ms: float) -> dict | None:
    """The trained row within the budget whose int8 file scores highest (it is
    the file that ships); a tie goes to the faster."""
    within = [r for r in rows if r.get("int8") is not None
              and r["latency_ms"] <= budget_ms]
    return max(within, key=lambda r: (r["int8"], -r["latency_ms"]), default=None)
