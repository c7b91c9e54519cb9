"""``pgvirt scan``, ``pgvirt patch`` and ``pgvirt check-patch``: argument handling and output only.

The work is in ``pgvirt.guest.paravirt``.  Exit codes as everywhere: 0 = nothing found / the
patched guest holds, 1 = violating sites found / the check fails, 2 = bad input or an answer
the solver could not decide (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from rich.console import Console
from rich.text import Text

from pgvirt.report.guests import check_summary, check_text, scan_summary, scan_table, unmodelled_table

from .common import add_profile, output_file, positive_int, progress, warn
from .errors import EXIT_BAD, EXIT_FAIL, EXIT_OK, UsageError



def address(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r}") from None
    if not 0 <= v < 1 << 32:
        raise argparse.ArgumentTypeError(f"not a 32-bit address: {text}")
    return v


def _errors(fn):
    """Bad input from the library becomes one line and exit 2 (UsageError, cli/errors.py)."""

    def run(args, out, err):
        from pgvirt.model import profiles

        from pgvirt.guest.image import GuestError
        from pgvirt.guest.paravirt import ManifestError, PatchError

        try:
            if getattr(args, "profile", None) is not None:
                profiles.get(args.profile)
            return fn(args, out, err)
        except GuestError as e:
            raise UsageError(e.cli) from None
        except (ManifestError, PatchError) as e:
            raise UsageError(str(e)) from None
        except KeyError as e:       # unknown profile or form: the model's message
            raise UsageError(e.args[0] if type(e) is KeyError and e.args else str(e)) from None
        except OSError as e:
            raise UsageError(f"{e.filename or 'I/O'}: {e.strerror or e}") from None
    return run


def _profile(args, name):
    """``name``, or with ``--controls FILE`` the hardware profile under that configuration."""
    if not getattr(args, "controls", None):
        return name
    from .theorems import load_controls
    return load_controls(name, args.controls)


def _cache(args):
    from pgvirt.guest.paravirt import ClassificationCache

    return ClassificationCache(enabled=not args.no_cache)


def _progress_for(args, err: Console):
    advance, close = progress(err, None, "classifying forms", args.format == "text" and err.is_terminal)
    return advance, close


# --- scan ------------------------------------------------------------------------------------------

@_errors
def cmd_scan(args, out: Console, err: Console) -> int:
    from pgvirt.guest.image import load_guest
    from pgvirt.guest.paravirt import scan_guest
    from pgvirt.report.documents import scan_json
    from pgvirt.report.sarif import scan_sarif

    g = load_guest(args.guest, raw=args.raw, base=args.base, symbols=args.symbols)
    advance, close = _progress_for(args, err)
    try:
        rep = scan_guest(g, _profile(args, args.profile), _cache(args), args.jobs, args.timeout_ms, advance,
                         strict=args.strict)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(scan_json(rep), indent=2))
    elif args.format == "sarif":
        print(json.dumps(scan_sarif(rep), indent=2))
    else:
        if rep.sites or rep.data_sites:
            out.print(scan_table(rep))
            for f in sorted({s.form for s in rep.sites + rep.data_sites}):
                out.print(Text(f"  {f}: {rep.reason(f)}", style="dim"))
        if rep.result.unmodelled:
            out.print(unmodelled_table(rep.result.unmodelled))
        out.print(Text(scan_summary(rep)))
    for note in rep.guest.notes:
        warn(err, note)
    if rep.cache_note:
        warn(err, rep.cache_note)
    if rep.undecided:
        return EXIT_BAD
    return EXIT_FAIL if rep.violating else EXIT_OK


# --- patch -----------------------------------------------------------------------------------------

@_errors
def cmd_patch(args, out: Console, err: Console) -> int:
    from pgvirt.guest.paravirt import patch_guest

    advance, close = _progress_for(args, err)
    try:
        res = patch_guest(args.guest, args.output, args.manifest, args.profile, args.allow or (),
                          args.raw, args.base, args.symbols, _cache(args), args.jobs, args.timeout_ms,
                          advance)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(res.manifest, indent=2))
    else:
        forms = Counter(s.form for s in res.patched)
        listing = ", ".join(f"{f} x{n}" for f, n in forms.most_common()) or "nothing to patch"
        out.print(Text(f"patched {len(res.patched)} site(s) of {args.guest} ({listing}) -> {res.out}"))
        out.print(Text(f"manifest: {res.manifest_path}  (hypercall: F4 + 90 padding; number = site index)"))
        if res.allowed:
            kept = Counter(s.form for s in res.allowed)
            out.print(Text("left in place by --allow: " + ", ".join(f"{f} x{n}" for f, n in kept.most_common())))
    if res.scan.cache_note:
        warn(err, res.scan.cache_note)
    return EXIT_OK


# --- check-patch -----------------------------------------------------------------------------------

@_errors
def cmd_check_patch(args, out: Console, err: Console) -> int:
    from pgvirt.guest.paravirt import check_patch, load_manifest
    from pgvirt.report.documents import check_json
    from pgvirt.report.sarif import check_sarif

    m = load_manifest(args.manifest)
    advance, close = _progress_for(args, err)
    try:
        rep = check_patch(args.patched, m, args.original, _profile(args, args.profile or m.profile),
                          args.allow or (), args.strict,
                          _cache(args), args.jobs, args.timeout_ms, progress=advance)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(check_json(rep), indent=2, default=str))
    elif args.format == "sarif":
        print(json.dumps(check_sarif(rep), indent=2, default=str))
    else:
        check_text(out, rep)
        out.print(Text(check_summary(rep)))
    if rep.cache_note:
        warn(err, rep.cache_note)
    if args.junit or args.sarif:
        from pgvirt.report.files import write_check_patch_reports

        try:
            write_check_patch_reports(rep, check_sarif(rep) if args.sarif else {}, args.junit, args.sarif)
        except OSError as e:
            raise UsageError(f"cannot write report: {e.strerror or e}") from None
    return {"holds": EXIT_OK, "fails": EXIT_FAIL, "unknown": EXIT_BAD}[rep.verdict]


# --- registration ----------------------------------------------------------------------------------

def _guest_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", action="store_true", help="a flat binary, not an ELF")
    p.add_argument("--base", type=address, default=None, help="load address of a --raw blob (default 0)")
    p.add_argument("--symbols", metavar="FILE", help="nm-style symbol file (e.g. /boot/tboot-syms)")


def _common(p: argparse.ArgumentParser, formats=("text", "json", "sarif"), manifest: bool = False) -> None:
    add_profile(p, manifest=manifest)
    p.add_argument("--format", choices=formats, default="text")
    p.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query; past it an answer is unknown (default 20000)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="worker processes for classifying forms not in the cache (default: cores)")
    p.add_argument("--no-cache", action="store_true",
                   help="derive every classification afresh; read and write no cache")


def _controls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controls", metavar="FILE",
                   help="vtx/svm: judge under these VMCS controls / VMCB intercepts (JSON) instead of the default")


def register(sub, commands) -> None:
    s = sub.add_parser("scan", help="find the sensitive-but-unprivileged instructions of a guest binary")
    s.add_argument("guest", metavar="GUEST", help="ELF32 i386 file (gzip allowed) or, with --raw, a blob")
    s.add_argument("--strict", action="store_true",
                   help="also sweep the executable data (bytes an executable segment maps outside the "
                        "code, e.g. .eh_frame in an RWX segment) as code; its sites count")
    _guest_opts(s)
    _controls(s)
    _common(s)
    commands["scan"] = cmd_scan

    p = sub.add_parser("patch", help="paravirtualize a guest: each violating site becomes a hypercall")
    p.add_argument("guest", metavar="GUEST")
    p.add_argument("-o", "--output", required=True, metavar="OUT", type=output_file, help="the patched guest")
    p.add_argument("--manifest", metavar="M", type=output_file, help="the site table (default: OUT.manifest.json)")
    p.add_argument("--allow", action="extend", nargs="+", metavar="FORM",
                   help="forms to leave in place (e.g. sgdt_m sidt_m, as Xen PV does)")
    _guest_opts(p)
    _common(p, formats=("text", "json"))
    commands["patch"] = cmd_patch

    c = sub.add_parser("check-patch", help="prove a patched guest sound against its manifest and original")
    c.add_argument("patched", metavar="PATCHED")
    c.add_argument("--manifest", required=True, metavar="M")
    c.add_argument("--original", metavar="ORIG", help="the unpatched guest (default: the manifest's)")
    c.add_argument("--allow", action="extend", nargs="+", metavar="FORM",
                   help="forms allowed to remain (not taken from the manifest)")
    c.add_argument("--strict", action="store_true",
                   help="instructions no form models make the verdict unknown")
    c.add_argument("--junit", metavar="FILE", type=output_file,
                   help="also write JUnit XML: one test case per claim and site")
    c.add_argument("--sarif", metavar="FILE", type=output_file, help="also write SARIF 2.1.0")
    _controls(c)
    _common(c, manifest=True)
    commands["check-patch"] = cmd_check_patch
