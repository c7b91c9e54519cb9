"""``export_smt``: each query of ``popek_goldberg.Engine.queries()`` as a self-contained SMT-LIB 2
script with Z3's answer, for another solver to re-check."""

from __future__ import annotations

import os
from pathlib import Path

from pgvirt.model import isa, profiles
from pgvirt.model.files import atomic_write

from .popek_goldberg import Engine
from .solver import DEFAULT_TIMEOUT_MS, Verdict, in_worker, smtlib


STATUS = {Verdict.PROVED: "unsat", Verdict.REFUTED: "sat", Verdict.UNKNOWN: "unknown"}


def _export_one(job) -> list[tuple[str, str, float]]:
    form_name, pname, timeout_ms, outdir = job
    prof = profiles.get(pname)
    if prof.vm is not None:     # a hardware profile: its hole queries (verify/hardware.py)
        from .hardware import OBLIGATIONS, HwEngine
        eng = HwEngine(isa.get(form_name), prof, timeout_ms)
        queries = {k: q for k, q in eng.queries().items() if k in OBLIGATIONS}
    else:
        eng = Engine(isa.get(form_name), prof, timeout_ms)
        queries = eng.queries()
    out = []
    for key, q in queries.items():
        r = eng.solve(q)[0]   # the answer classify uses, so the file and the verdicts agree
        rel = f"{pname}/{form_name}.{key}.smt2"
        text = smtlib(q.formula, STATUS[r.verdict], f"{pname}/{form_name}/{q.name}")
        atomic_write(Path(outdir, rel), text.encode())   # an interrupted export leaves no half file
        out.append((rel, STATUS[r.verdict], r.seconds))
    return out


def export_smt(outdir: str | os.PathLike, profile_names: list[str], forms: list[str] | None = None,
               timeout_ms: int = DEFAULT_TIMEOUT_MS, jobs: int | None = None,
               progress=None) -> list[tuple[str, str, float]]:
    """Write ``<profile>/<form>.<query>.smt2`` under ``outdir``; return (path, status, seconds)."""
    from pgvirt.model import parallel

    names = forms or [f.name for f in isa.FORMS]
    for n in names:
        isa.get(n)
    for p in profile_names:
        profiles.get(p)
        Path(outdir, p).mkdir(parents=True, exist_ok=True)
    work = [(n, p, timeout_ms, str(outdir)) for p in profile_names for n in names]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    done = []
    results = map(_export_one, work) if jobs <= 1 else parallel.imap(_export_one, work, jobs, initializer=in_worker)
    try:
        for item in results:
            done.extend(item)
            if progress:
                progress(item[0][0] if item else "")
    except BaseException:
        # A worker stopped mid-write leaves its temporary file: the finished files stay, whole.
        for p in profile_names:
            for tmp in Path(outdir, p).glob(".pgvirt-*"):
                tmp.unlink(missing_ok=True)
        raise
    return done
