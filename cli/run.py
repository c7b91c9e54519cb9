"""``pgvirt run`` and ``pgvirt demo-guest``: guests under monitors on Unicorn.

    pgvirt run GUEST [--monitor native|trap|paravirt|scan|vtx] [--steps N] [--input KEYS]
                     [--format text|json] [--compare native,trap,paravirt,scan,vtx] [--screens DIR]
                     [--profile pentium] [--manifest M --patched P] [--controls FILE]
    pgvirt demo-guest OUT                   # write the demonstration guest

Exit codes: ``run`` 0 when the guest ended by itself (HLT with nothing to wake it, or a reset),
2 for bad input or a run that ended in error (triple fault, memory outside the guest, an
instruction no form models trapped) or ran past ``--steps``; ``--compare`` 0 when every monitor
matches native or diverges where a Theorem-1 verdict explains it, 1 when a divergence is
unexplained, 2 for bad input or a native run that ended in error.  Errors are one line.

``pgvirt.monitor`` imports only the model and the emulator: what it needs of the verifier (the
scan predicate, the patcher, the explainer) is ``Services``, built from ``pgvirt.api``.
``--controls FILE`` is the VMCS controls file ``pgvirt verify --controls`` takes, for ``vtx``
(``model.vmx.load``; a refused file is one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

from pgvirt.monitor import api
from pgvirt.monitor.compare import Comparison
from pgvirt.report import monitor as report, screens

from .common import add_profile, positive_int
from .errors import EXIT_BAD, EXIT_FAIL, EXIT_OK, UsageError


@dataclass
class Services:
    """The verifier's part: the scan predicate, the patcher and the explainer."""

    sensitive: Callable | None = None        # profile -> (bytes -> form name | None)
    patch: Callable | None = None            # (original, directory, profile) -> (patched, manifest)
    explain: Callable | None = None          # (divergence JSON, profile) -> verdict | None

    @classmethod
    def verifier(cls) -> "Services":
        from pgvirt import api as A
        return cls(A.monitor_sensitive, A.monitor_patch, A.explain_divergence)


def _monitors(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in api.MONITORS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown monitor {', '.join(bad) or text!r} "
                                         f"(known: {', '.join(api.MONITORS)})")
    return names


# What ``register`` hands the commands when it is given nothing (tests swap in their own).
SERVICES: Services | None = None


def register(sub, commands: dict, services: Services | None = None) -> None:
    services = services or SERVICES or Services.verifier()
    r = sub.add_parser("run", help="run a multiboot guest under a monitor on Unicorn; "
                                   "--compare runs monitors in lock step against native")
    r.add_argument("guest", metavar="GUEST")
    r.add_argument("--monitor", default="native", choices=api.MONITORS)
    r.add_argument("--steps", type=positive_int, default=api.DEFAULT_STEPS,
                   help=f"instruction budget (default {api.DEFAULT_STEPS})")
    r.add_argument("--input", default="", metavar="KEYS",
                   help="scripted keys: names (p, space, left, enter, f1, ...), NAME*N, +N to wait")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--compare", type=_monitors, metavar="LIST",
                   help="monitors to run against native in lock step, e.g. trap,paravirt,scan")
    r.add_argument("--screens", metavar="DIR", help="write the VGA frames as PNG pictures")
    add_profile(r)
    r.add_argument("--patched", metavar="FILE", help="the patched guest for paravirt "
                                                      "(default: pgvirt patch into a temporary directory)")
    r.add_argument("--manifest", metavar="FILE", help="its manifest (with --patched)")
    r.add_argument("--controls", metavar="FILE",
                   help="vtx: the VMCS controls as JSON, as pgvirt verify --controls takes them "
                        "(default: the documented default configuration)")
    commands["run"] = lambda args, out, err: cmd_run(args, services)
    d = sub.add_parser("demo-guest", help="write pgvirt's demonstration guest (a multiboot ELF)")
    d.add_argument("out", metavar="OUT")
    commands["demo-guest"] = lambda args, out, err: cmd_demo(args)


def _fail(msg: str) -> int:
    raise UsageError(msg)


def cmd_demo(args) -> int:
    from pgvirt.monitor import demo

    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        return _fail(f"no such directory: {parent}")
    try:
        demo.write(args.out)
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e.strerror or e}")
    print(args.out)
    return EXIT_OK


def _controls(args, names: list[str]):
    from pgvirt.model import vmx

    if args.controls is None:
        return None
    if "vtx" not in names:
        raise api.RunError("--controls applies to the vtx monitor")
    try:
        return vmx.load(args.controls)
    except vmx.ControlsError as e:
        raise api.RunError(f"controls file refused: {e}") from None


def _setup_kw(args, services: Services, names: list[str], tmp: str) -> dict:
    kw = {"profile": args.profile}
    if "vtx" in names:
        kw["controls"] = _controls(args, names)
    elif args.controls is not None:
        _controls(args, names)
    if "scan" in names:
        if services.sensitive is None:
            raise api.RunError("the scan monitor needs the verifier's classification (run it "
                               "through the pgvirt command)")
        kw["sensitive"] = services.sensitive(args.profile)
    if "paravirt" in names:
        if bool(args.patched) != bool(args.manifest):
            raise api.RunError("--patched and --manifest go together")
        if args.patched:
            kw["paravirt"] = (args.patched, args.manifest)
        elif services.patch is None:
            raise api.RunError("the paravirt monitor needs --patched and --manifest")
        else:
            kw["paravirt"] = services.patch(args.guest, tmp, args.profile)
    return kw


def cmd_run(args, services: Services) -> int:
    names = args.compare if args.compare else [args.monitor]
    if args.screens:
        parent = os.path.dirname(os.path.abspath(args.screens))
        if not os.path.isdir(parent):
            return _fail(f"--screens: no such directory: {parent}")
    try:
        with tempfile.TemporaryDirectory(prefix="pgvirt-run-") as tmp:
            kw = _setup_kw(args, services, names, tmp)
            if args.compare:
                return _compare(args, services, names, kw)
            return _single(args, kw)
    except api.RunError as e:
        return _fail(str(e))
    except KeyError as e:                    # an unknown profile or form, named by the model
        return _fail(str(e.args[0]) if type(e) is KeyError and e.args else str(e))
    except (ValueError, OSError) as e:       # the patcher's bad-input errors, unwritable files
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except RuntimeError as e:                # a fault in Unicorn or in a monitor: one line
        return _fail(f"internal: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _single(args, kw) -> int:
    setup = api.Setup(args.guest, input=args.input, **kw)
    monitor = setup.build(args.monitor)
    result = monitor.run(args.steps)
    final = monitor.final_frame()
    if args.format == "json":
        print(json.dumps(report.run_json(result), indent=1))
    else:
        print(report.run_text(result, final))
    if args.screens:
        screens.write_run(result, args.screens, final)
    if result.end.error:
        print(f"pgvirt: {args.guest}: {result.end.line()}", file=sys.stderr)
        return EXIT_BAD
    return EXIT_OK


def _compare(args, services: Services, names: list[str], kw) -> int:
    explain = None
    if services.explain is not None:
        if "vtx" in names:
            explain = lambda div: services.explain(div, args.profile, controls=kw.get("controls"))
        else:
            explain = lambda div: services.explain(div, args.profile)
    c: Comparison = api.compare(args.guest, names, steps=args.steps, input=args.input,
                                explain=explain, **kw)
    if args.format == "json":
        print(json.dumps(report.compare_json(c), indent=1, default=str))
    else:
        print(report.compare_text(c))
    if args.screens:
        _comparison_screens(args, c, kw)
    if c.reference.end.error and c.reference.end.reason != "steps":
        print(f"pgvirt: {args.guest}: native: {c.reference.end.line()}", file=sys.stderr)
        return EXIT_BAD
    if c.unexplained:
        print(f"pgvirt: unexplained divergence under {', '.join(v.monitor for v in c.unexplained)}",
              file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _comparison_screens(args, c: Comparison, kw) -> None:
    """Each run's frames, and native beside every monitor with the first divergence marked."""
    finals = {}
    marks = {}
    for r in [c.reference] + [v.result for v in c.verdicts]:
        if r.record.frames:
            finals[r.monitor] = r.record.frames[-1][1]
        for tick, frame in r.record.frames:
            os.makedirs(args.screens, exist_ok=True)
            screens.render(frame).save(os.path.join(args.screens, f"{r.monitor}-tick{tick:05d}.png"))
    for v in c.verdicts:
        if v.divergence is not None:
            d = v.divergence
            marks[v.monitor] = f"first divergence: {d.eip:#x} {d.asm}"
    if finals:
        screens.write_comparison(finals, marks, args.screens)


__all__ = ["register", "Services", "SERVICES", "cmd_run"]
