"""The search's candidates: the grid of `budget.*` (variant x minimalistic x
alpha x resolution), each a copy of the user's config that differs in those
four keys only, so it trains with the user's data and recipe."""

from __future__ import annotations

import dataclasses
import itertools

from mnv3.config import Config
from mnv3.config.rules import check_consistency


@dataclasses.dataclass(frozen=True)
class Candidate:
    variant: str
    minimalistic: bool
    alpha: float
    image_size: int

    @property
    def name(self) -> str:
        """A file-safe name that sorts and reads: small_0.75_min_160."""
        return (f"{self.variant}_{self.alpha:g}" + ("_min" if self.minimalistic else "")
                + f"_{self.image_size}")

    @property
    def architecture(self) -> tuple:
        """What decides whether starting weights fit (the resolution does not)."""
        return self.variant, self.minimalistic, self.alpha

    def config(self, cfg: Config, epochs: int | None = None) -> Config:
        """`cfg` with this candidate's network and input size (square) and, if
        given, `epochs` as train.epochs. Checked like a loaded config: a
        candidate the rules refuse raises ConfigError (one line)."""
        out = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, variant=self.variant,
                                           minimalistic=self.minimalistic,
                                           alpha=self.alpha),
            data=dataclasses.replace(cfg.data, image_size=self.image_size,
                                     image_width=None))
        if epochs is not None:
            out = dataclasses.replace(out, train=dataclasses.replace(cfg.train,
                                                                     epochs=epochs))
        check_consistency(out)
        return out


def candidate_of(row: dict) -> Candidate:
    """The candidate a result row (which carries its fields) is about."""
    return Candidate(**{f.name: row[f.name] for f in dataclasses.fields(Candidate)})


def given(cfg: Config) -> Candidate:
    """The config as the user wrote it, as a candidate (it is trained for comparison)."""
    return Candidate(cfg.model.variant, cfg.model.minimalistic, cfg.model.alpha,
                     cfg.data.image_size)


def grid(cfg: Config) -> list[Candidate]:
    """Every combination of the budget section's lists, and the given config,
    without repeats, in a fixed order."""
    b = cfg.budget
    found = [Candidate(v, m, a, s) for v, m, a, s in itertools.product(
        b.variants, b.minimalistic, b.alphas, b.image_sizes)]
    found.append(given(cfg))
    return sorted(set(found), key=lambda c: (c.variant, c.minimalistic, c.alpha,
                                             c.image_size))
