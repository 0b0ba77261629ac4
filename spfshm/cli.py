"""Command line: argument parsing and dispatch only.

Exit status: 0 clean, 1 violations found, 2 usage error (one line naming the argument),
3 hang, crash or internal error.
"""
import argparse
import os
import sys

from . import __version__

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, naming the bad argument, exit 2 (argparse would print the usage too).
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        sys.exit(EXIT_USAGE)


def writable_path(value):
    """An output file whose directory exists and is writable (checked before any run)."""
    d = os.path.dirname(os.path.abspath(value)) or "."
    if not os.path.isdir(d):
        raise argparse.ArgumentTypeError("directory %r does not exist" % d)
    if not os.access(d, os.W_OK):
        raise argparse.ArgumentTypeError("directory %r is not writable" % d)
    return value


def build_parser():
    p = _Parser(prog="spfshm", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version="spfshm " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    prim = bsub.add_parser("primitives", help="per-operation costs of the native core")
    prim.add_argument("--json", type=writable_path, metavar="PATH",
                      help="also write the results as JSON")
    prim.add_argument("--quick", action="store_true", help="fewer rounds (seconds, noisier)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench" and args.bench == "primitives":
            from .bench import primitives
            return primitives.main(args)
    except UsageError as e:
        sys.stderr.write("spfshm: error: %s\n" % e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("spfshm: interrupted\n")
        return 130
    return EXIT_INTERNAL
