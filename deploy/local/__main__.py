"""``python -m deploy.local up|down|status|env [--only kafka,postgres,...]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import GROUPS, ServerError, TestBed


def _groups(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description="Install, start and stop the test bed's real servers (Kafka x2, PostgreSQL, OpenSearch, "
        "Prometheus) on 127.0.0.1. Ports: INGESTD_TESTBED_<NAME>_PORT; folders: INGESTD_TESTBED_HOME "
        "(state) and INGESTD_TESTBED_CACHE (downloads).",
    )
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument(
        "--only",
        type=_groups,
        default=None,
        help=f"comma-separated subset of {','.join(GROUPS)} (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    bed = TestBed()
    try:
        if args.action == "up":
            began = time.monotonic()
            env = bed.up(args.only)
            print(
                f"# test bed up in {time.monotonic() - began:.1f} s; endpoints in {bed.layout.env_file}",
                file=sys.stderr,
            )
            for key, value in sorted(env.items()):
                print(f"export {key}={value}")
        elif args.action == "down":
            bed.down(args.only)
        elif args.action == "env":
            for key, value in sorted(bed.endpoints().items()):
                print(f"export {key}={value}")
        else:
            report = bed.status()
            if args.json:
                print(json.dumps([vars(s) for s in report], indent=2))
            else:
                total = 0
                for s in report:
                    total += s.memory_bytes
                    state = "ready" if s.ready else ("starting" if s.running else "stopped")
                    mem = f"{s.memory_bytes / 2**20:7.0f} MiB" if s.running else ""
                    print(f"{s.name:16} {state:9} {s.pid or '':>8} {mem}")
                print(f"{'total':16} {'':9} {'':>8} {total / 2**20:7.0f} MiB")
            return 0 if all(s.ready for s in report) or args.action != "status" else 3
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
