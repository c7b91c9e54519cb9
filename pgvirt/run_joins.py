"""The joins of ``pgvirt run`` that need the verifier: the top layer above ``pgvirt.monitor``.

``pgvirt.monitor`` imports only the model and the emulator.  What it needs from the verifier is
built here and handed in:

* ``sensitive(profile)`` - the scan monitor's predicate, bytes -> the form name when the form is
  a Theorem-1 violation under the profile (sensitive but not privileged), else None; the form
  is named by the scanner's own matcher and judged by the solver's classification (cached);
* ``patch(original, directory, profile)`` - ``pgvirt patch`` into ``directory``: the patched
  guest and its manifest, for the paravirtual monitor;
* ``explain(divergence, profile)`` - the Theorem-1 verdict that explains a first divergence:
  the violated classes of the diverging instruction's form, the reason ``pgvirt scan`` prints
  for that site, and the solver's witness.  None when the form is no violation (or no form
  describes the instruction): such a divergence is a bug, and ``pgvirt run`` exits 1.

This module belongs in the CLI package (``cli/run.py`` once it exists); ``register`` adds the
``run`` command through the ``pgvirt.commands`` entry point meanwhile.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

from pgvirt.model import profiles


def _profile(profile) -> profiles.Profile:
    return profiles.get(profile) if isinstance(profile, str) else profile


@lru_cache(maxsize=8)
def _violations(profile_name: str) -> dict:
    """form name -> Classification for every modelled form that violates Theorem 1."""
    from pgvirt.model import isa
    from pgvirt.verify.cache import classifications
    from pgvirt.verify.paravirt import violation

    got, _derived = classifications(profile_name, [f.name for f in isa.FORMS])
    return {n: c for n, c in got.items() if violation(c)}


def sensitive(profile="pentium") -> Callable[[bytes], str | None]:
    """bytes of one instruction -> its form's name when that form violates Theorem 1."""
    from pgvirt.verify.guest import match_form

    table = _violations(_profile(profile).name)

    @lru_cache(maxsize=1 << 16)
    def predicate(code: bytes) -> str | None:
        f = match_form(code)
        return f.name if f is not None and f.name in table else None

    return predicate


def patch(original: str, directory: str, profile="pentium") -> tuple[str, str]:
    """``pgvirt patch ORIGINAL -o DIR/NAME.patched --manifest DIR/NAME.manifest.json``."""
    from pgvirt.verify.paravirt import patch_guest

    base = os.path.join(directory, os.path.basename(original))
    out, manifest = base + ".patched", base + ".manifest.json"
    patch_guest(original, out, manifest, profile=_profile(profile).name)
    return out, manifest


def explain(div: dict, profile="pentium", witness: bool = True) -> dict | None:
    """The verdict explaining a divergence (``monitor.compare`` JSON), or None."""
    from pgvirt.verify.cache import classifications
    from pgvirt.verify.paravirt import reason, violation

    form = div.get("form")
    name = _profile(profile).name
    if form is None or form not in _violations(name):
        return None
    got, _ = classifications(name, [form], witnesses=witness)
    c = got[form]
    out = {"form": form, "profile": name, "classes": list(violation(c)), "reason": reason(c)}
    if witness:
        for cls in ("control_sensitive", "mode_sensitive", "location_sensitive"):
            a = c.answers.get(cls)
            if a is not None and a.value and a.witness is not None:
                out["witness"] = {"class": cls, "states": a.witness}
                break
    return out


def register(sub, commands) -> None:
    """Add ``pgvirt run`` to the CLI, with the verifier's joins."""
    from pgvirt.monitor import cli

    cli.register(sub, commands, cli.Services(sensitive=sensitive, patch=patch, explain=explain))


__all__ = ["sensitive", "patch", "explain", "register"]
