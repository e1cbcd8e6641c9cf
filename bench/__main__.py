"""`python -m bench [NAME ...] [--smoke]`: run benchmarks, print summaries, save bench/results/.

Names: ingest, coldstart, claim, drain, lateness, policies, soak (default: all). --smoke runs each in
seconds with tiny sizes, as the test suite does; numbers from it mean nothing. `python -m bench
policies --trace FILE.csv` replays your own chat log through the buffering policies.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from bench.common import RESULTS_DIR, write_results

ALL = ["ingest", "coldstart", "claim", "drain", "lateness", "policies", "soak"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*ALL, []], default=[])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--trace", type=Path, metavar="FILE.csv",
                        help="policies only: replay this chat log (conversation,sender,timestamp,text) "
                             "instead of the generated traffic")
    args = parser.parse_args()
    for name in args.names or ALL:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        if name == "policies":
            out_dir = RESULTS_DIR / ("smoke" if args.smoke else "" if args.trace is None else args.trace.stem)
            result = module.run(smoke=args.smoke, out_dir=out_dir, trace=args.trace)
        else:
            result = module.run(smoke=args.smoke)
        result["seconds"] = round(time.monotonic() - started, 1)
        path = write_results(name + ("-smoke" if args.smoke else ""), result)
        print("\n".join(result["summary"]), f"\n  ({result['seconds']} s; {path.name})\n", flush=True)


if __name__ == "__main__":
    main()
