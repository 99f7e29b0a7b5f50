"""``bench``: run suites, list methods, render reports, gate on leakage regressions.

Every user error is one line on stderr and exit code 2; a run with failed cells exits 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from bench.core.errors import BenchError, quiet_known_warnings


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"bench: error: {message}\n")


def _cmd_list(args) -> int:
    from bench.core import registry
    from bench.core.catalog import catalog  # read from the sources: no torch import

    what = args.what
    found, errors = catalog(registry.registered) if what != "suites" else ({}, [])
    kinds = ["defenses", "attacks", "datasets", "suites"] if what == "all" else [what]
    for kind in kinds:
        if what == "all":
            print(f"{kind}:")
        if kind == "suites":
            from bench.harness.suite import load_suite_file, suite_names

            for name in suite_names():
                _, data = load_suite_file(name)
                print(f"  {name:<16} {str(data.get('description', '')).strip().splitlines()[0] if data.get('description') else ''}")
            continue
        for name in sorted(found[kind]):
            e = found[kind][name]
            if kind == "defenses":
                print(f"  {name:<16} unit={e.tag:<8} {e.doc}")
            elif kind == "attacks":
                print(f"  {name:<16} kind={e.tag:<10} {e.doc}")
            else:
                print(f"  {name:<16} {e.doc}")
    for err in errors:
        print(f"warning: {err}", file=sys.stderr)
    return 0


def _print_cells(name: str, cells) -> None:
    print(f"suite '{name}': {len(cells)} cells (dry run, nothing trained)")
    for c in cells:
        eps = "inf" if math.isinf(c.epsilon) else f"{c.epsilon:g}"
        print(f"  {c.dataset:<14} eps={eps:<6} delta={c.delta:g} {c.label:<12} seed={c.seed} "
              f"attacks={','.join(c.attacks) or '-'}")


def _cmd_run(args) -> int:
    from bench.core.records import Cell
    from bench.harness import memo
    from bench.harness.suite import apply_overrides, load_suite_file

    if args.jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {args.jobs}")
    name, data = load_suite_file(args.suite)
    data = apply_overrides(data, args.set or [])
    # a suite resolved before, with the same sources: its cells and keys without importing torch
    plain = args.device == "cpu" and args.executor == "local" and not args.address
    fp = memo.fingerprint(name, data) if plain else None
    hit = memo.lookup(fp)
    if hit is not None:
        if args.dry_run:
            _print_cells(hit["name"], [Cell.from_dict(c) for c in hit["cells"]])
            return 0
        if memo.rerun_if_done(hit, Path(args.out or Path("runs") / hit["name"]), list(sys.argv), data, args.jobs,
                              args.device):
            return 0
    from bench.harness.runner import cell_key, run_suite
    from bench.harness.suite import parse_suite

    suite = parse_suite(name, data)
    cells = suite.cells()
    if args.dry_run:  # a dry run creates nothing, the memo included: it only reads one a run left
        _print_cells(suite.name, cells)
        return 0
    memo.remember(fp, suite.name, cells, [cell_key(c) for c in cells])
    out = Path(args.out or Path("runs") / suite.name)
    res = run_suite(suite, out, jobs=args.jobs, device=args.device, cache_dir=args.cache_dir,
                    data_dir=args.data_root, argv=sys.argv, executor=args.executor, address=args.address)
    return 1 if res["failed"] else 0


def _cmd_report(args) -> int:
    from reports.write import write_report

    paths = write_report(args.run_dir, args.out, inversion_from=args.inversion_from)
    for p in paths:
        print(p)
    return 0


def _cmd_check(args) -> int:
    from reports.check import check_run, write_baseline

    if args.write_baseline:
        path = write_baseline(args.run_dir, args.baseline)
        print(f"baseline written: {path}")
        return 0
    ok, lines = check_run(args.run_dir, args.baseline, leakage_tolerance=args.tolerance,
                          accuracy_tolerance=args.accuracy_tolerance, unaudited=args.unaudited)
    for line in lines:
        print(line)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Privacy attack-and-audit benchmark harness")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a suite (skips cells already done in --out)")
    r.add_argument("--suite", required=True, help="suite name (see `bench list suites`) or path to a YAML file")
    r.add_argument("--out", help="run directory (default runs/<suite>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite key, dotted (e.g. defenses.dpsgd.epochs=5); repeatable")
    r.add_argument("--jobs", type=int, default=1,
                   help="cells run in parallel in a local process pool (default: 1, one after the other); "
                        "with --executor ray and no --address: the CPUs of the local Ray instance (1: all CPUs)")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: this machine (sequential or --jobs processes); ray: one Ray task per cell and "
                        "per reference model (pip install 'privacy-bench[ray]')")
    r.add_argument("--address", help="Ray cluster address (auto, HOST:PORT or ray://HOST:PORT); default: start a "
                                     "local Ray instance")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device")
    r.add_argument("--dry-run", action="store_true", help="list the expanded cells and exit")
    r.add_argument("--data-root", help="dataset root (default $BENCH_DATA or ~/.cache/privacy-bench/data)")
    r.add_argument("--cache-dir", help="artifact cache (default $BENCH_CACHE/artifacts)")
    r.set_defaults(func=_cmd_run)

    ls = sub.add_parser("list", help="list registered methods, datasets or suites")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "defenses", "attacks", "datasets", "suites"])
    ls.set_defaults(func=_cmd_list)

    rep = sub.add_parser("report", help="render tables (Markdown, CSV, LaTeX), plots and report.html from a run "
                                        "directory")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="output directory (default RUN_DIR/report)")
    rep.add_argument("--inversion-from", metavar="RUN_DIR2",
                     help="a run whose inversion attacks ran on the same defenses in a separate invocation: its "
                          "inversion metrics join the tables (for the rows RUN_DIR has) and its grids are drawn")
    rep.set_defaults(func=_cmd_report)

    ch = sub.add_parser("check", help="fail when leakage rises or accuracy falls against a baseline, "
                                          "or when an audited epsilon exceeds a claimed one")
    ch.add_argument("run_dir")
    ch.add_argument("--baseline", required=True, help="baseline JSON file")
    ch.add_argument("--tolerance", type=float, default=None,
                    help="one allowed absolute rise for every leakage metric (default: each metric's own tolerance "
                         "in the baseline, from its seed spread and bootstrap interval)")
    ch.add_argument("--accuracy-tolerance", type=float, default=None,
                    help="one allowed absolute drop of accuracy (default: the baseline's per-row tolerance)")
    ch.add_argument("--unaudited", default="fail", choices=["fail", "warn"],
                    help="a row that claims a DP epsilon but has no audited epsilon: fail (default) or warn")
    ch.add_argument("--write-baseline", action="store_true", help="write the baseline from this run instead")
    ch.set_defaults(func=_cmd_check)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_known_warnings()
    if getattr(args, "data_root", None):
        os.environ["BENCH_DATA"] = args.data_root
    try:
        return args.func(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished cells are stored, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench list | head`: the reader left; nothing to report
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
