"""python -m mnv3.budget: the same as mnv3-budget."""

from mnv3 import cli

cli.main(cli.budget)
