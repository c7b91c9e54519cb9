"""Report files a command writes beside its output (``--junit``, ``--sarif``)."""

from __future__ import annotations

import json

from .junit import check_patch_junit, junit
from .sarif import sarif


def write_verify_reports(per_profile, junit_path: str | None, sarif_path: str | None,
                         wall: float | None = None) -> None:
    """The ``pgvirt verify --junit/--sarif`` files."""
    if junit_path:
        with open(junit_path, "wb") as fh:
            junit(per_profile, wall).write(fh, encoding="utf-8", xml_declaration=True)
    if sarif_path:
        with open(sarif_path, "w", encoding="utf-8") as fh:
            json.dump(sarif(per_profile), fh, indent=2)
            fh.write("\n")


def write_check_patch_reports(rep, sarif_doc: dict, junit_path: str | None, sarif_path: str | None) -> None:
    if junit_path:
        check_patch_junit(rep).write(junit_path, encoding="utf-8", xml_declaration=True)
    if sarif_path:
        with open(sarif_path, "w", encoding="utf-8") as fh:
            json.dump(sarif_doc, fh, indent=2, default=str)
            fh.write("\n")
