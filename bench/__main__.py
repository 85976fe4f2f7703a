"""Run benchmarks: ``python -m bench all`` or ``python -m bench <name> [--repeat N]``.

Services are provided as for the tests (``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``, Docker, or local
processes). Each benchmark prints a table and writes ``bench/results/<benchmark>.json``. Without
``--repeat`` each benchmark repeats its timed cases as often as it sees fit (services: 3, store: 1,
codec: 1, relay: 1, dispatch: 1, workers: 1, process_managers: 1, global_order: 1, rebase: 1).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench import (
    bench_codec,
    bench_dispatch,
    bench_global_order,
    bench_process_managers,
    bench_rebase,
    bench_relay,
    bench_services,
    bench_store,
    bench_workers,
)
from bench.results import Row, show, write

BENCHMARKS: dict[str, Callable[..., list[Row]]] = {
    bench_services.NAME: bench_services.run,
    bench_store.NAME: bench_store.run,
    bench_codec.NAME: bench_codec.run,
    bench_relay.NAME: bench_relay.run,
    bench_dispatch.NAME: bench_dispatch.run,
    bench_workers.NAME: bench_workers.run,
    bench_process_managers.NAME: bench_process_managers.run,
    bench_global_order.NAME: bench_global_order.run,
    bench_rebase.NAME: bench_rebase.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("which", choices=["all", *BENCHMARKS])
    parser.add_argument("--repeat", type=int)
    args = parser.parse_args()
    for name, run in BENCHMARKS.items():
        if args.which in ("all", name):
            rows = run() if args.repeat is None else run(repeat=args.repeat)
            show(rows)
            print(f"wrote {write(name, rows)}")


if __name__ == "__main__":
    main()
