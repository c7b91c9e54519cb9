"""The ``umip`` profile: as ``pentium``, on a processor that implements CR4.UMIP (SDM Vol. 3A 2.5)
and deprecates the x87 FCS/FDS selectors (SDM Vol. 1 8.1.8; both arrived with processors of
the 2010s), and a monitor that sets UMIP while the guest runs."""

from __future__ import annotations

from .. import state as st
from .base import Profile, register
from .pentium import LACKS as PENTIUM_LACKS, NOTES, PASSTHROUGH
from ..features import KNOWN

LACKS = PENTIUM_LACKS - {"umip", "zero_fcs_fds"}
FEATURES = KNOWN - LACKS

UMIP = register(Profile(
    "umip",
    "as pentium, with CR4.UMIP implemented and set by the monitor, and x87 FCS/FDS deprecated",
    FEATURES, cr4_set=(st.CR4_TSD, st.CR4_UMIP), cr4_clear=(st.CR4_PCE, st.CR4_PVI, st.CR4_VME),
    cr0_clear=(st.CR0_AM,), passthrough=PASSTHROUGH,
    notes=NOTES + ("features: every feature pgvirt knows but " + ", ".join(sorted(LACKS)),)))
