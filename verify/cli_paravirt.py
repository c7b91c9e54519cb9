"""``pgvirt scan``, ``pgvirt patch`` and ``pgvirt check-patch``: argument handling and output only.

The work is in ``pgvirt.verify.paravirt``.  Exit codes as everywhere: 0 = nothing found / the
patched guest holds, 1 = violating sites found / the check fails, 2 = bad input or an answer
the solver could not decide (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .cli import EXIT_BAD, EXIT_FAIL, EXIT_OK, UsageError, _progress, output_file, positive_int

SHORT = {"control_sensitive": "control", "mode_sensitive": "mode", "location_sensitive": "location",
         "user_sensitive": "user", "undecided": "undecided"}
STATUS_STYLE = {"holds": "bold green", "fails": "bold red", "unknown": "bold yellow", "outside": "yellow"}


def address(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r}") from None
    if not 0 <= v < 1 << 32:
        raise argparse.ArgumentTypeError(f"not a 32-bit address: {text}")
    return v


def _errors(fn):
    """Bad input from the library becomes one line and exit 2 (UsageError in cli.main)."""

    def run(args, out, err):
        from pgvirt.model import profiles

        from .guest import GuestError
        from .paravirt import ManifestError, PatchError

        try:
            if getattr(args, "profile", None) is not None:
                profiles.get(args.profile)
            return fn(args, out, err)
        except (GuestError, ManifestError, PatchError) as e:
            raise UsageError(str(e)) from None
        except KeyError as e:       # unknown profile or form: the model's message
            raise UsageError(e.args[0] if type(e) is KeyError and e.args else str(e)) from None
        except OSError as e:
            raise UsageError(f"{e.filename or 'I/O'}: {e.strerror or e}") from None
    return run


def _cache(args):
    from .paravirt import ClassificationCache

    return ClassificationCache(enabled=not args.no_cache)


def _progress_for(args, err: Console):
    advance, close = _progress(err, None, "classifying forms", args.format == "text" and err.is_terminal)
    return advance, close


def _classes(cls) -> str:
    return " + ".join(SHORT.get(c, c) for c in cls)


# --- scan ------------------------------------------------------------------------------------------

def scan_table(rep) -> Table:
    from .paravirt import group_by_function

    r = rep.result
    t = Table(title=Text(f"{rep.guest.path}: sites that violate Theorem 1 under {rep.profile.name}"),
              header_style="bold", title_justify="left")
    for col, kw in (("function", {}), ("address", {"justify": "right"}), ("offset", {}),
                    ("bytes", {}), ("asm", {}), ("form", {}), ("sensitive", {})):
        t.add_column(col, **kw)
    for func, sites in group_by_function(r.sites).items():
        for k, s in enumerate(sites):
            off = s.symbol.split("+", 1)[1] if s.symbol and "+" in s.symbol else ("+0" if s.symbol else "")
            style = "yellow" if s.classes == ("undecided",) else "red"
            t.add_row(func if k == 0 else "", f"{s.address:#x}", off, s.bytes, Text(s.asm), s.form,
                      Text(_classes(s.classes), style=style), end_section=k == len(sites) - 1)
    return t


def unmodelled_table(unmodelled, limit: int = 12) -> Table:
    t = Table(title="instructions no form models (outside the proof, not counted harmless)",
              header_style="bold", title_justify="left", box=None, padding=(0, 1))
    for col in ("mnemonic", "count", "first at", "example"):
        t.add_column(col)
    for u in unmodelled[:limit]:
        t.add_row(u.mnemonic, str(u.count), " ".join(f"{a:#x}" for a in u.first[:3]), Text(u.example))
    if len(unmodelled) > limit:
        rest = unmodelled[limit:]
        t.add_row(f"... {len(rest)} more", str(sum(u.count for u in rest)), "", "")
    return t


def scan_summary(rep) -> str:
    r = rep.result
    forms = Counter(s.form for s in r.sites)
    funcs = {s.symbol.split("+", 1)[0] if s.symbol else s.section for s in r.sites}
    listing = ", ".join(f"{f} x{n}" for f, n in forms.most_common())
    head = (f"{os.path.basename(rep.guest.path)} [{rep.profile.name}]: {len(r.sites)} violating site(s)"
            + (f" in {len(funcs)} function(s) ({listing})" if r.sites else ""))
    return (f"{head}; {r.instructions} instructions, {r.unmodelled_count} unmodelled "
            f"({len(r.unmodelled)} mnemonics), {r.undecodable} undecodable bytes  "
            f"[{rep.seconds:.2f} s; {len(rep.derived)} form(s) classified now, "
            f"{len(rep.verdicts) - len(rep.derived)} from the cache]")


@_errors
def cmd_scan(args, out: Console, err: Console) -> int:
    from .guest import load_guest
    from .paravirt import scan_guest, scan_json, scan_sarif

    g = load_guest(args.guest, raw=args.raw, base=args.base, symbols=args.symbols)
    advance, close = _progress_for(args, err)
    try:
        rep = scan_guest(g, args.profile, _cache(args), args.jobs, args.timeout_ms, advance)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(scan_json(rep), indent=2))
    elif args.format == "sarif":
        print(json.dumps(scan_sarif(rep), indent=2))
    else:
        if rep.sites:
            out.print(scan_table(rep))
            for f in sorted({s.form for s in rep.sites}):
                out.print(Text(f"  {f}: {rep.reason(f)}", style="dim"))
        if rep.result.unmodelled:
            out.print(unmodelled_table(rep.result.unmodelled))
        out.print(Text(scan_summary(rep)))
    if rep.cache_note:
        err.print(Text(f"pgvirt: warning: {rep.cache_note}", style="yellow"))
    if rep.undecided:
        return EXIT_BAD
    return EXIT_FAIL if rep.sites else EXIT_OK


# --- patch -----------------------------------------------------------------------------------------

@_errors
def cmd_patch(args, out: Console, err: Console) -> int:
    from .paravirt import patch_guest

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
        err.print(Text(f"pgvirt: warning: {res.scan.cache_note}", style="yellow"))
    return EXIT_OK


# --- check-patch -----------------------------------------------------------------------------------

def _state_brief(d: dict, keys) -> str:
    return ", ".join(f"{k}={d[k]:#x}" for k in keys if k in d and not isinstance(d[k], dict))


def counterexample_lines(cx: dict) -> list[str]:
    lines = [f"    differs in: {', '.join(cx['differs']) or '(see the states)'}"
             f"{'  (replayed concretely)' if cx.get('replayed') else ''}"]
    s = cx["guest_state"]
    keys = ["eip", "esp", "cpl", "sysflags", "flags", "cs", "ss"]
    lines.append(f"    guest view: {_state_brief(s, keys)}")
    lines.append(f"    host state: {_state_brief(cx['host_state'], ['cpl', 'sysflags', 'cr4', 'cs', 'ss'])}")
    o, h = cx["original"], cx["handler"]
    lines.append(f"    original:   {'fault ' + str(o['vector']) if o.get('fault') else json.dumps(o.get('changed'), default=str)[:200]}")
    lines.append(f"    handler:    {'fault ' + str(h['vector']) if h.get('fault') else json.dumps(h.get('guest_view_changed'), default=str)[:200]}")
    return lines


def check_text(out: Console, rep) -> None:
    t = Table(title=Text(f"check-patch {rep.patched} against {rep.original} [{rep.profile}]"),
              header_style="bold", title_justify="left")
    t.add_column("claim")
    t.add_column("status")
    t.add_column("detail")
    eq = [o for o in rep.obligations if o.claim == "equivalence"]
    for o in rep.obligations:
        if o.claim == "equivalence" and o.status == "holds" and len(eq) > 8:
            continue   # many sites: the proved ones are summed up below
        t.add_row(o.claim, Text(o.status, style=STATUS_STYLE[o.status]), Text(o.message))
    proved = sum(o.status == "holds" for o in eq)
    if len(eq) > 8:
        t.add_row("equivalence", Text("holds" if proved == len(eq) else f"{proved}/{len(eq)}",
                                      style=STATUS_STYLE["holds" if proved == len(eq) else "fails"]),
                  f"{proved} of {len(eq)} site handlers proved equal to their original instruction")
    out.print(t)
    for o in rep.obligations:
        if o.claim == "equivalence" and o.status == "fails" and o.detail:
            out.print(Text(f"  counterexample for site #{o.site} at {o.address:#x}:", style="red"))
            for line in counterexample_lines(o.detail):
                out.print(Text(line))


def check_summary(rep) -> str:
    eq = [o for o in rep.obligations if o.claim == "equivalence"]
    fails = rep.failures()
    head = f"{os.path.basename(rep.patched)} [{rep.profile}]: {rep.verdict.upper()}"
    if rep.verdict == "holds" and rep.unmodelled_count:
        head += " for every modelled instruction"
    parts = [f"{len(rep.sites)} hypercall site(s)", f"{sum(o.status == 'holds' for o in eq)} proved equivalent",
             f"{len(rep.remaining)} violation(s) remain", f"{len(rep.allowed)} allow-listed",
             f"{rep.unmodelled_count} unmodelled"]
    if fails:
        parts.append(f"{len(fails)} failing claim(s), first: {fails[0].message[:120]}")
    return f"{head}: " + "; ".join(parts) + f"  [{rep.seconds:.2f} s]"


@_errors
def cmd_check_patch(args, out: Console, err: Console) -> int:
    from .paravirt import check_json, check_patch, check_sarif, load_manifest

    m = load_manifest(args.manifest)
    advance, close = _progress_for(args, err)
    try:
        rep = check_patch(args.patched, m, args.original, args.profile, args.allow or (), args.strict,
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
        err.print(Text(f"pgvirt: warning: {rep.cache_note}", style="yellow"))
    if args.junit or args.sarif:
        from .ci_reports import write_check_patch_reports

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


def _common(p: argparse.ArgumentParser, formats=("text", "json", "sarif"), profile_default="pentium") -> None:
    p.add_argument("--profile", default=profile_default,
                   help="host settings the monitor imposes (default: "
                        + (profile_default or "the manifest's") + ")")
    p.add_argument("--format", choices=formats, default="text")
    p.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query; past it an answer is unknown (default 20000)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="worker processes for classifying forms not in the cache (default: cores)")
    p.add_argument("--no-cache", action="store_true",
                   help="derive every classification afresh; read and write no cache")


def register(sub, commands) -> None:
    s = sub.add_parser("scan", help="find the sensitive-but-unprivileged instructions of a guest binary")
    s.add_argument("guest", metavar="GUEST", help="ELF32 i386 file (gzip allowed) or, with --raw, a blob")
    _guest_opts(s)
    _common(s)
    commands["scan"] = cmd_scan

    p = sub.add_parser("patch", help="paravirtualize a guest: each violating site becomes a hypercall")
    p.add_argument("guest", metavar="GUEST")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the patched guest")
    p.add_argument("--manifest", metavar="M", help="the site table (default: OUT.manifest.json)")
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
    _common(c, profile_default=None)
    commands["check-patch"] = cmd_check_patch
