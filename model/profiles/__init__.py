"""Profiles: which features a processor has and what its monitor imposes on a guest, one module
per profile (pentium, umip, vtx, svm), each data plus citations; the
machinery they share (well-formed states, mode and relocation) is in ``base``."""

from .base import (ASSUMPTIONS, CR0_NAMES, CR4_NAMES, PROFILES, Profile, UnknownProfile,  # noqa: F401
                   deprivileged, get, host_constraints, host_settings, io_map_base, register,
                   seg_attr_dpl, seg_attr_p, seg_attr_s, seg_attr_type, wellformed, with_mode,
                   xstate_ok)
from .pentium import NOTES, PASSTHROUGH, PENTIUM  # noqa: F401
from .umip import UMIP  # noqa: F401
from .vtx import VTX  # noqa: F401
from .svm import SVM  # noqa: F401

__all__ = ["ASSUMPTIONS", "CR0_NAMES", "CR4_NAMES", "PROFILES", "Profile", "UnknownProfile",
           "deprivileged", "get", "host_constraints", "host_settings", "io_map_base", "register",
           "seg_attr_dpl", "seg_attr_p", "seg_attr_s", "seg_attr_type", "wellformed", "with_mode",
           "xstate_ok", "NOTES", "PASSTHROUGH", "PENTIUM", "UMIP", "VTX", "SVM"]
