"""`python -m bench [NAME ...] [--smoke]`: run benchmarks, print summaries, save bench/results/.

Names: ingest, coldstart, claim, drain, lateness, policies, soak (default: all). --smoke runs each in
seconds with tiny sizes, as the test suite does; numbers from it mean nothing.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench.common import RESULTS_DIR, write_results

ALL = ["ingest", "coldstart", "claim", "drain", "lateness", "policies", "soak"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*ALL, []], default=[])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    for name in args.names or ALL:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        if name == "policies":
            result = module.run(smoke=args.smoke, out_dir=RESULTS_DIR / ("smoke" if args.smoke else ""))
        else:
            result = module.run(smoke=args.smoke)
        result["seconds"] = round(time.monotonic() - started, 1)
        path = write_results(name + ("-smoke" if args.smoke else ""), result)
        print("\n".join(result["summary"]), f"\n  ({result['seconds']} s; {path.name})\n", flush=True)


if __name__ == "__main__":
    main()
