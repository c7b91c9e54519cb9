"""The ``vtx`` profile: Intel VT-x, the guest in VMX non-root operation under ``vmx.DEFAULT``
(``--controls FILE`` replaces it), on the processor of the ``umip`` profile with VMX.

Mode is root versus non-root; the guest runs at its own CPL on the guest-state area (SDM Vol. 3C
24.4), and the monitor owns what ``profiles.hardware.ownership`` lists.  A 32-bit guest without
paging runs with "unrestricted guest" and EPT (SDM Vol. 3C 26.3.1.1: CR0.PE and PG may then be 0
in the guest; EPT maps guest-physical memory), the real CR0.NE and CR4.VMXE fixed to 1 and hidden
behind the read shadows (23.8, 24.6.6).  Without unrestricted guest VM entry needs CR0.PG = 1: a
controls file that masks PG with a shadow of 0 is the monitor forcing paging on and hiding it
behind the CR0 read shadow, an identity page table under linear = physical, as
``verify.hardware.forced_paging_hidden`` models it; without that mask no unpaged real state passes
VM entry and every verdict is UNKNOWN, never proved.
"""

from __future__ import annotations

from .. import vmx
from .base import Profile, register
from .pentium import NOTES, PASSTHROUGH
from .umip import FEATURES as UMIP_FEATURES

FEATURES = UMIP_FEATURES | {"vmx"}

VTX = register(Profile(
    "vtx",
    "Intel VT-x: the guest in VMX non-root operation at its own CPL, under the documented default "
    "VMCS controls (EPT, unrestricted guest, I/O and MSR bitmaps; --controls FILE for others)",
    FEATURES, passthrough=PASSTHROUGH, vm=vmx.DEFAULT,
    notes=NOTES[:3] + ("mode: VMX root versus non-root; the monitor owns only what the VMCS "
                       "guest-state area does not duplicate (SDM Vol. 3C 24.4; profiles.hardware)",
                       "features: those of the umip profile, and VMX")))
