"""Run benchmarks: ``python -m bench all`` or ``python -m bench services [--repeat N]``.

Services are provided as for the tests (``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``, Docker, or local
processes). Each benchmark prints a table and writes ``bench/results/<benchmark>.json``.
"""

from __future__ import annotations

import argparse

from bench import bench_services
from bench.results import show, write

BENCHMARKS = {bench_services.NAME: bench_services.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", choices=["all", *BENCHMARKS])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name, run in BENCHMARKS.items():
        if args.which in ("all", name):
            rows = run(repeat=args.repeat)
            show(rows)
            print(f"wrote {write(name, rows)}")


if __name__ == "__main__":
    main()
