"""Processor features the forms ask about with ``Exec.has`` (a profile lists the ones it has).

Each name is one CPUID-reported capability (SDM Vol. 2A CPUID; AMD APM Vol. 3 Appendix E).  A
processor without a feature raises #UD for its instructions and treats its control bits as
reserved (MOV CR4 #GP(0), WRMSR #GP(0)); ``state.cr4_defined`` and ``state.efer_defined`` say
which CR4 and IA32_EFER bits exist for a feature set, for the forms and for ``wellformed`` alike.
"""

from __future__ import annotations

from pathlib import Path

FEATURES: dict[str, str] = {
    "umip": "CR4.UMIP: SGDT/SIDT/SLDT/SMSW/STR #GP(0) at CPL > 0 (CPUID.(EAX=07H,ECX=0):ECX[2])",
    "vmx": "VMX: CR4.VMXE and the VMX instructions (CPUID.01H:ECX.VMX[5])",
    "smx": "SMX: CR4.SMXE and GETSEC (CPUID.01H:ECX.SMX[6])",
    "svm": "AMD SVM: EFER.SVME, VMRUN/VMLOAD/VMSAVE/STGI/CLGI/INVLPGA (CPUID 8000_0001H:ECX[2])",
    "skinit": "AMD SKINIT and STGI without EFER.SVME (CPUID 8000_0001H:ECX[12])",
    "syscall": "SYSCALL/SYSRET outside 64-bit mode with EFER.SCE, STAR (AMD legacy mode; "
               "CPUID 8000_0001H:EDX[11])",
    "xsave": "XSAVE: CR4.OSXSAVE, XCR0, XGETBV/XSETBV (CPUID.01H:ECX.XSAVE[26])",
    "xsaves": "XSAVES/XRSTORS and IA32_XSS (CPUID.(EAX=0DH,ECX=1):EAX[3])",
    "monitor": "MONITOR/MWAIT (CPUID.01H:ECX.MONITOR[3])",
    "pcid": "CR4.PCIDE (CPUID.01H:ECX.PCID[17])",
    "invpcid": "INVPCID (CPUID.(EAX=07H,ECX=0):EBX.INVPCID[10])",
    "fsgsbase": "CR4.FSGSBASE and RDFSBASE/WRFSBASE/RDGSBASE/WRGSBASE in 64-bit mode "
                "(CPUID.(EAX=07H,ECX=0):EBX[0])",
    "rdrand": "RDRAND (CPUID.01H:ECX.RDRAND[30])",
    "rdseed": "RDSEED (CPUID.(EAX=07H,ECX=0):EBX.RDSEED[18])",
    "smep": "CR4.SMEP (CPUID.(EAX=07H,ECX=0):EBX.SMEP[7])",
    "smap": "CR4.SMAP, CLAC/STAC (CPUID.(EAX=07H,ECX=0):EBX.SMAP[20])",
    "pku": "CR4.PKE (CPUID.(EAX=07H,ECX=0):ECX.PKU[3])",
    "rdpid": "RDPID (CPUID.(EAX=07H,ECX=0):ECX.RDPID[22])",
    "wbnoinvd": "WBNOINVD (CPUID.80000008H:EBX[9])",
    "cet_ss": "CET shadow stacks and CR4.CET (CPUID.(EAX=07H,ECX=0):ECX.CET_SS[7])",
    "sgx": "SGX: ENCLS, ENCLU (CPUID.(EAX=07H,ECX=0):EBX.SGX[2])",
    "pconfig": "PCONFIG (CPUID.(EAX=07H,ECX=0):EDX.PCONFIG[18])",
}

# Other vendors' and earlier processors' instruction sets (model/isa/vendor.py, each form citing
# where it is described): no profile's processor has any of them.  Each: what its instructions do.
VENDOR: dict[str, str] = {
    "padlock_ace": "encrypts ECX blocks from ES:[ESI] to ES:[EDI] under the control word at [EDX] "
                   "and the key at [EBX]",
    "padlock_phe": "hashes ECX bytes from ES:[ESI] into the state at ES:[EDI]",
    "padlock_pmm": "Montgomery multiplication over the operands block at ES:[ESI]",
    "padlock_rng": "stores random bytes from the hardware generator to ES:[EDI]",
    "padlock_gmi": "SM3 hashing or SM4 encryption of ECX blocks from ES:[ESI] to ES:[EDI]",
    "cyrix_smm": "saves or restores a segment, LDTR or TSS descriptor cache in SMM",
    "cyrix_smint": "enters SMM",
    "cyrix_smint_0f7e": "enters SMM",
    "cyrix_shr": "reads or writes the SMM header register",
    "cyrix_ddi": "reads or writes an internal processor register or resets a BLT buffer",
    "cyrix_dmi": "enters or returns from debug management mode",
    "cyrix_emmi": "an MMX operation writing the partner register implied by the destination",
    "centaur_ais": "switches to the alternate instruction set",
    "cl1invmb": "invalidates the L1 message-buffer lines",
    "udbg": "reads or writes the debug state",
    "umov": "moves between user memory and a register in ICE mode",
    "ia64": "jumps to Itanium instruction set code",
    "intel286_only": "loads or stores the whole processor state, descriptor caches included",
    "intel386_only": "loads the whole processor state from ES:[EDI], descriptor caches included",
    "fpu287xl_only": "returns the coprocessor to real mode",
    "mov_tr": "moves to or from a test register TR3-TR7",
}


# The CPUID features of the instruction codes the decoder tables list (iced-x86's names, lower
# case), as tools/footprints.py wrote them beside the table: a derived form asks for these.
_TABLE = Path(__file__).resolve().parent / "derived" / "cpuid_features.txt"
DECODER_FEATURES: tuple[str, ...] = tuple(n for n in _TABLE.read_text().split() if n)
# Behaviours that are not instructions (SDM Vol. 1 8.1.8: CPUID.(EAX=07H,ECX=0):EBX[13] "FPU CS
# and FPU DS deprecated": x87 instructions store 0 for the last instruction's and operand's
# segment selectors).
BEHAVIOURS = {"zero_fcs_fds": "x87 FCS/FDS store 0 (CPUID.(EAX=07H,ECX=0):EBX[13])"}
KNOWN = frozenset(FEATURES) | frozenset(VENDOR) | frozenset(DECODER_FEATURES) | frozenset(BEHAVIOURS)


def known(name: str) -> bool:
    return name in KNOWN


class UnknownFeature(KeyError):
    def __str__(self) -> str:
        return (f"unknown processor feature {self.args[0]!r} (known: {', '.join(FEATURES)}, "
                f"{', '.join(BEHAVIOURS)} and the decoder's {len(DECODER_FEATURES)} CPUID features)")


def check(features) -> frozenset[str]:
    """``features`` as a frozenset, every name known."""
    out = frozenset(features)
    for f in out:
        if f not in KNOWN:
            raise UnknownFeature(f)
    return out
