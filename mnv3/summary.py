"""python -m mnv3.summary --config CONFIG [--set KEY=VALUE ...] [--json]

Prints the parameter count and multiply-adds of the configured model (one
1 x H x W x 3 forward pass), as a table per layer or as one JSON object.
"""

from __future__ import annotations

import json

from mnv3 import cli, tasks
from mnv3 import config as config_lib
from mnv3.model.cost import summarize


def _format_table(info: dict) -> str:
    lines = [f"{info['name']}  input {'x'.join(map(str, info['input']))}", ""]
    lines.append(f"{'layer':32s} {'output':>16s} {'params':>10s} {'madds':>12s}")
    for r in info["layers"]:
        shape = "x".join(map(str, r["output"])) if r["output"] else ""
        lines.append(f"{r['layer']:32s} {shape:>16s} {r['params']:>10,d} {r['madds']:>12,d}")
    lines.append("")
    lines.append(f"total params: {info['params']:,d}")
    lines.append(f"total multiply-adds: {info['madds']:,d} ({info['madds'] / 1e6:.1f} M)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = cli.parser(__doc__.split("\n\n", 1)[1])
    cli.add_config_flags(p, "YAML config (defaults when omitted)", "model.alpha=0.75")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def go():
        args = p.parse_args(argv)
        cfg = config_lib.load(args.config, args.set)

        info = summarize(tasks.get(cfg).build(cfg))
        if args.json:
            info = {k: v for k, v in info.items() if k != "layers"}
            print(json.dumps(info))
        else:
            print(_format_table(info))
    return cli.run_command(go)


if __name__ == "__main__":
    cli.main(main)
