"""The ``pentium`` profile: IA-32 with the Pentium's system architecture (no UMIP, no VMX, SVM or
SMX), the trap-and-emulate monitor of Robin and Irvine's analysis, and every user-level ISA
extension the decoders know, so that Theorem 1's verdict ranges over all of them.

The monitor runs the guest at CPL 3 with IOPL 0, CR4.TSD = 1 and CR4.PCE = 0 (PVI and VME
clear), no TSS I/O permission bitmap, and CR0.AM = 0; the guest's FPU/SIMD controls pass
through (``PASSTHROUGH``).  x87 instructions store the CS and DS selectors of the last
instruction and operand (FCS/FDS) as every processor did before their deprecation.
"""

from __future__ import annotations

from .. import state as st
from ..features import KNOWN, VENDOR
from .base import Profile, register

# What a trap-and-emulate monitor does with the FPU/SIMD controls and alignment checking while a
# guest runs.  The guest's own FPU, SSE and AVX state runs natively, so the real CR0.MP/EM/TS,
# CR4.OSFXSR/OSXMMEXCPT/OSXSAVE and XCR0 hold the guest's values (a monitor that switches FPU
# state lazily reflects the guest's TS in the real one and forwards the #NM); EFLAGS.AC is the
# guest's (POPF writes it at any CPL).  CR0.AM is the monitor's: with AM = 1 every misaligned
# access of a guest that sets AC would raise #AC at CPL 3 and not natively at CPL 0.
PASSTHROUGH = (
    ("cr0", (1 << st.CR0_MP) | (1 << st.CR0_EM) | (1 << st.CR0_TS)),
    ("cr4", (1 << st.CR4_OSFXSR) | (1 << st.CR4_OSXMMEXCPT) | (1 << st.CR4_OSXSAVE) | (1 << st.CR4_PKE)),
    ("xcr0", (1 << 64) - 1),
    ("sysflags", 1 << st.AC),
)
NOTES = (
    "CR0.MP/EM/TS: the guest's, loaded into the real CR0 while it runs (SDM Vol. 3A 2.5, "
    "Table 2-2; 13.4: the OS-side handling of #NM)",
    "CR4.OSFXSR/OSXMMEXCPT/OSXSAVE/PKE and XCR0: the guest's (SDM Vol. 3A 2.5, 13.1-13.3; "
    "Vol. 1 13.3: XSETBV sets XCR0; PKE, like OSXSAVE, only makes a USER register, PKRU, "
    "available: without paging no page has a protection key, 4.6.2)",
    "EFLAGS.AC: the guest's, POPF/POPFD write it at any CPL (SDM Vol. 1 3.4.3.3, Vol. 2B POPF)",
    "CR0.AM = 0 imposed: no #AC in the deprivileged guest (SDM Vol. 3A 2.5; 6.15 interrupt 17)",
)
# What the Pentium-class processor lacks: the instructions that changed virtualization, the
# ones that need states the model assumes away (SGX enclaves, CET), AMD's legacy-mode SYSCALL,
# FCS/FDS deprecation (a behaviour of processors from 2013 on), and other vendors' and earlier
# processors' instruction sets.
LACKS = frozenset({"umip", "vmx", "svm", "skinit", "smx", "sgx", "pconfig", "cet_ss", "syscall",
                   "zero_fcs_fds"}) | frozenset(VENDOR)
FEATURES = KNOWN - LACKS

PENTIUM = register(Profile(
    "pentium",
    "Pentium-class IA-32 (no UMIP, VMX, SVM or SMX; x87 stores FCS/FDS) with every user-level ISA "
    "extension; guest runs at CPL 3, IOPL 0, CR4.TSD=1, CR4.PCE=0, CR0.AM=0, no I/O bitmap",
    FEATURES, cr4_set=(st.CR4_TSD,), cr4_clear=(st.CR4_PCE, st.CR4_PVI, st.CR4_VME),
    cr0_clear=(st.CR0_AM,), passthrough=PASSTHROUGH,
    notes=NOTES + ("features: every feature pgvirt knows but " + ", ".join(sorted(LACKS)),)))
