"""python -m mnv3.config: prints the config reference of docs/config.md."""

from mnv3.config.reference import reference_markdown

print(reference_markdown())
