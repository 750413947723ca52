"""A real race under the FSKIL protocol: the four variants of docs/fskil-synthetic.md
(cosine, dot:minmax:global, dot:meanstd:global, ce-only) plus cosine at a learning rate
too small to learn anything (1e-7), an arm that is clearly worse, raced until decided.

    .venv/bin/python bench/race_science.py --name race-synthetic --storage /tmp/science
    .venv/bin/python bench/race_science.py --data /tmp/espeak-prepared --name race-espeak \\
        --storage /tmp/science

The command line cannot add one arm with its own learning rate (a --grid crosses every
variant), so this plans the sweep `dotsim sweep --until-decided` plans and adds the arm
through the Python API (orchestrator.plan, orchestrator.sweep), then prints the same
dry-run lines and runs it. Before the race, one `dotsim train`-equivalent run of the
baseline at seed 1000 (not one of the race's seeds) gives the time estimate its trials.
Then `dotsim report STORAGE/NAME` prints its decisions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from orchestrator import plan, sweep
from orchestrator.estimate import dry_run_lines
from orchestrator.launch import train
from workers.config import RunConfig

VARIANTS = ["cosine", "dot:minmax:global", "dot:meanstd:global", "ce-only"]
TINY_LR = 1e-7


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="prepared folder [default: synthetic]")
    parser.add_argument("--storage", required=True, help="storage path of the race")
    parser.add_argument("--name", required=True, help="sweep folder name")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-seeds", type=int, default=4)
    parser.add_argument("--no-timing-run", action="store_true",
                        help="skip the run that gives the time estimate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    base = RunConfig(protocol="fskil", batch_size=80, epochs=args.epochs, data=args.data,
                     storage_path=args.storage)
    planned = plan.plan_sweep(base, variants=VARIANTS, name=args.name,
                              until=plan.Until(max_seeds=args.max_seeds))
    worse = {**planned.race.arms[0], "lr": TINY_LR}
    race = dataclasses.replace(planned.race, arms=[*planned.race.arms, worse], level=None)
    planned = dataclasses.replace(planned, race=race.calibrated())
    if not args.no_timing_run:
        timing = plan.plan_run(planned.base.replace(seed=1000, run_name=None,
                                                    **planned.race.arms[0]))
        train(timing)
    print("\n".join(dry_run_lines(planned, None)), file=sys.stderr)
    sweep.start(planned)


if __name__ == "__main__":
    main()
