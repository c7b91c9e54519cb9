"""``pgvirt export-smt``: every proof obligation as an SMT-LIB 2 file for re-checking by another solver."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from .common import Parser, add_profile, positive_int, profile_names, progress
from .errors import EXIT_BAD, EXIT_OK, UsageError


def cmd_export_smt(args, out, err) -> int:
    from pgvirt.model import isa

    from pgvirt.verify.smtlib import export_smt

    names = profile_names(args)
    for f in args.forms:
        isa.get(f)   # KeyError -> one-line error in main
    outdir = Path(args.dir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"not a directory: {outdir}")
    total = len(args.forms or isa.FORMS) * len(names)
    advance, close = progress(err, total, "exporting", err.is_terminal)
    t0 = time.perf_counter()
    try:
        done = export_smt(outdir, names, args.forms or None, args.timeout_ms, args.jobs, advance)
    except OSError as e:
        raise UsageError(f"cannot write {outdir}: {e.strerror or e}") from None
    finally:
        close()
    counts = Counter(status for _, status, _ in done)
    print(f"wrote {len(done)} SMT-LIB files to {outdir}: {counts['sat']} sat, {counts['unsat']} unsat, "
          f"{counts['unknown']} unknown  [{time.perf_counter() - t0:.1f} s]")
    return EXIT_BAD if counts["unknown"] else EXIT_OK


class _Intermixed(Parser):
    """Lets FORM names follow options (``export-smt DIR --profile P FORM ...``), which plain
    argparse rejects once a positional has been consumed before the options."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:   # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(sub, commands) -> None:
    e = sub.add_parser("export-smt", help="write every proof obligation as SMT-LIB 2 with Z3's answer")
    e.__class__ = _Intermixed   # add_parser builds the subparsers' common class; refine this one
    e.add_argument("dir", metavar="DIR", help="output directory (files go to DIR/<profile>/<form>.<query>.smt2)")
    add_profile(e, all_profiles=True)
    e.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    e.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query; past it the status is unknown (default 20000)")
    e.add_argument("--jobs", type=positive_int, default=None, help="worker processes (default: cores)")
    e.set_defaults(format="text")
    commands["export-smt"] = cmd_export_smt

