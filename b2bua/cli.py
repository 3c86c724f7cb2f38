"""The `b2bua` command: `run` serves calls, `check` explains the file.

Exit codes (contract): 0 ok, 1 bad configuration, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from b2bua import flows
from b2bua.config import Config, ConfigError, load
from b2bua.policy import Record

EXIT_OK = 0
EXIT_BAD_CONFIG = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="b2bua", description="SIP B2BUA with call recording.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_p = sub.add_parser("run", help="start the B2BUA in the foreground")
    run_p.add_argument("--config", metavar="FILE", help="flows.toml to use (default ./flows.toml, else the demo)")
    run_p.add_argument("--sip-trace", action="store_true", help="log every SIP message sent and received")
    check_p = sub.add_parser("check", help="validate the file and show which routes are recorded")
    check_p.add_argument("--config", metavar="FILE", help="flows.toml to check (default ./flows.toml, else the demo)")
    check_p.add_argument("--json", action="store_true", help="print one JSON array of routes")
    # -- [cluster]: b2bua.cluster holds the logic; these only parse and hand over.
    cluster_p = sub.add_parser("cluster", help="run the edge (Kamailio) and the workers of [cluster]")
    cluster_p.add_argument("--config", metavar="FILE", help="flows.toml with a [cluster] section (default ./flows.toml)")
    cluster_p.add_argument("--sip-trace", action="store_true", help="workers log every SIP message sent and received")
    worker_p = sub.add_parser("worker", help="run one cluster worker alone (its edge runs elsewhere)")
    worker_p.add_argument("--config", metavar="FILE", required=True, help="flows.toml with a [cluster] section")
    worker_p.add_argument("--index", metavar="N", type=int, required=True, help="which worker: 0 to workers-1")
    worker_p.add_argument("--sip-trace", action="store_true", help="log every SIP message sent and received")
    edge_p = sub.add_parser("edge-config", help="print the Kamailio configuration `b2bua cluster` uses")
    edge_p.add_argument("--config", metavar="FILE", help="flows.toml with a [cluster] section (default ./flows.toml)")
    edge_p.add_argument("--out", metavar="DIR", help="write kamailio.cfg and dispatcher.list into DIR instead of printing")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("b2bua: error: a command is required (run, check, cluster, worker or edge-config)", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"b2bua: bad configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command == "check":
        return check(config, as_json=args.json)
    if args.command in ("cluster", "worker", "edge-config"):
        return cluster_command(args, config)
    from b2bua.server import serve  # the server pulls in asyncio, sockets, media

    return serve(config, sip_trace=args.sip_trace)


def check(config: Config, as_json: bool = False) -> int:
    routes = flows.all_routes(config)
    if as_json:
        print(json.dumps([{"route": list(r.steps), "recorded": r.recorded(config)} for r in routes]))
        return EXIT_OK
    print(f"{config.path}: OK")
    switch = "on" if config.organisation.call_recording else "OFF (nothing is recorded, *1 does nothing)"
    print(f"Organisation: {config.organisation.name}; Call Recording: {switch}")
    if not routes:
        print("No routes: add [[numbers]] and [[users]].")
        return EXIT_OK
    rows = [(" → ".join(r.steps), "yes" if r.recorded(config) else "no", _why(config, r)) for r in routes]
    width = max(len(row[0]) for row in rows)
    print(f"{'ROUTE':<{width}}  RECORDED  WHY")
    for route, recorded, why in rows:
        print(f"{route:<{width}}  {recorded:<8}  {why}")
    print("*1 during a call toggles recording for that call (users only, not the external party).")
    return EXIT_OK


def cluster_command(args: argparse.Namespace, config: Config) -> int:
    """`cluster`, `worker`, `edge-config`: all need the file's [cluster] section."""
    if config.cluster is None:
        print(f"b2bua: bad configuration: {config.path}: cluster: missing; `b2bua {args.command}` needs a [cluster] section",
              file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command == "edge-config":
        from pathlib import Path

        from b2bua.cluster.edge_config import printable, write

        if args.out:
            try:
                cfg, listing = write(config, Path(args.out))
            except OSError as exc:
                print(f"b2bua: error: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_USAGE
            print(f"{cfg}\n{listing}")
            return EXIT_OK
        print(printable(config), end="")
        return EXIT_OK
    if args.command == "worker":
        if not 0 <= args.index < config.cluster.workers:
            print(f"b2bua: error: --index {args.index}: expected 0 to {config.cluster.workers - 1} ([cluster] workers = "
                  f"{config.cluster.workers})", file=sys.stderr)
            return EXIT_USAGE
        from b2bua.cluster.worker import run_worker

        return run_worker(config, args.index, sip_trace=args.sip_trace)
    from b2bua.cluster.supervisor import run_cluster

    return run_cluster(config, sip_trace=args.sip_trace)


def _why(config: Config, route: flows.Route) -> str:
    """Name the application whose setting decided, so an admin knows what to change."""
    if not config.organisation.call_recording:
        return "organisation call_recording = false"
    deciding = [(name, s) for name, s in route.settings if s is not Record.DONT_CARE]
    if not deciding:
        return "every application says dont_care (default: not recorded)"
    name, setting = deciding[-1]
    return f"{name} = {setting.value}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
