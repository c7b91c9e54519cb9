"""Other vendors' and earlier processors' instructions: VIA PadLock and Zhaoxin GMI, Cyrix and
Geode SMM, debug and extended-MMX instructions, ICE and Itanium entry, the 286/386 LOADALL, the
287XL's FRSTPM, and MOV to or from a test register.

No profile's processor has any of them (``features.VENDOR``; every profile lacks them), so each is
#UD under every profile (SDM Vol. 2A 2.4, an opcode the processor does not implement).  What one
does on a processor that has it is not modelled: a profile that listed the feature would run it
only in states assumed away, and the verdicts list that assumption (``_vendor``).  The decoder
takes some of them only with a vendor option (the form names its iced-x86 Code).
"""

from __future__ import annotations

import z3

from ..features import VENDOR
from ..form import form
from .extensions import _need


def _vendor(x, feature: str, what: str) -> None:
    """#UD unless the processor has ``feature``; with it, the instruction is assumed not to run."""
    if _need(x, feature, what):
        x.assume(z3.BoolVal(False), f"{what} on a processor with {feature} is not modelled "
                                    f"({VENDOR[feature]})")


@form("altinst", enc="0F 3F", bytes="0f3f", asm="altinst",
      cite="VIA C3 processor: the alternate instruction set (ALTINST)", code="ALTINST")
def altinst(x):
    _vendor(x, "centaur_ais", "ALTINST")

@form("bb0_reset", enc="0F 3A", bytes="0f3a", asm="bb0_reset",
      cite="Cyrix MediaGX / Geode GX1 Processor Data Book (display driver instructions)", code="BB0_RESET")
def bb0_reset(x):
    _vendor(x, "cyrix_ddi", "BB0_RESET")

@form("bb1_reset", enc="0F 3B", bytes="0f3b", asm="bb1_reset",
      cite="Cyrix MediaGX / Geode GX1 Processor Data Book (display driver instructions)", code="BB1_RESET")
def bb1_reset(x):
    _vendor(x, "cyrix_ddi", "BB1_RESET")

@form("ccs_encrypt_16", enc="a16 F3 0F A7 F0", bytes="67f30fa7f0", asm="addr16 rep ccs_encrypt",
      cite="Zhaoxin GMI instruction reference (CCS_HASH, CCS_ENCRYPT)")
def ccs_encrypt_16(x):
    _vendor(x, "padlock_gmi", "CCS_ENCRYPT")

@form("ccs_encrypt_32", enc="a32 F3 0F A7 F0", bytes="f30fa7f0", asm="rep ccs_encrypt",
      cite="Zhaoxin GMI instruction reference (CCS_HASH, CCS_ENCRYPT)")
def ccs_encrypt_32(x):
    _vendor(x, "padlock_gmi", "CCS_ENCRYPT")

@form("ccs_hash_16", enc="a16 F3 0F A6 E8", bytes="67f30fa6e8", asm="addr16 rep ccs_hash",
      cite="Zhaoxin GMI instruction reference (CCS_HASH, CCS_ENCRYPT)")
def ccs_hash_16(x):
    _vendor(x, "padlock_gmi", "CCS_HASH")

@form("ccs_hash_32", enc="a32 F3 0F A6 E8", bytes="f30fa6e8", asm="rep ccs_hash",
      cite="Zhaoxin GMI instruction reference (CCS_HASH, CCS_ENCRYPT)")
def ccs_hash_32(x):
    _vendor(x, "padlock_gmi", "CCS_HASH")

@form("cl1invmb", enc="0F 0A", bytes="0f0a", asm="cl1invmb",
      cite="Intel Single-chip Cloud Computer (SCC) programmer's guide (CL1INVMB)", code="CL1INVMB")
def cl1invmb(x):
    _vendor(x, "cl1invmb", "CL1INVMB")

@form("cpu_read", enc="0F 3D", bytes="0f3d", asm="cpu_read",
      cite="Cyrix MediaGX / Geode GX1 Processor Data Book (display driver instructions)", code="CPU_READ")
def cpu_read(x):
    _vendor(x, "cyrix_ddi", "CPU_READ")

@form("cpu_write", enc="0F 3C", bytes="0f3c", asm="cpu_write",
      cite="Cyrix MediaGX / Geode GX1 Processor Data Book (display driver instructions)", code="CPU_WRITE")
def cpu_write(x):
    _vendor(x, "cyrix_ddi", "CPU_WRITE")

@form("dmint", enc="0F 39", bytes="0f39", asm="dmint",
      cite="AMD Geode LX Processor Data Book (DMI)", code="DMINT")
def dmint(x):
    _vendor(x, "cyrix_dmi", "DMINT")

@form("frstpm", enc="DB E5", bytes="dbe5", asm="frstpm",
      cite="Intel 80287XL FRSTPM", code="FRSTPM")
def frstpm(x):
    _vendor(x, "fpu287xl_only", "FRSTPM")

@form("jmpe_disp16", enc="o16 0F B8 cw", bytes="660fb80000", asm="jmpe 0",
      cite="Intel Itanium Architecture SDM Vol. 3, JMPE", code="JMPE_DISP16")
def jmpe_disp16(x):
    _vendor(x, "ia64", "JMPE")

@form("jmpe_disp32", enc="o32 0F B8 cd", bytes="0fb800000000", asm="jmpe 0",
      cite="Intel Itanium Architecture SDM Vol. 3, JMPE", code="JMPE_DISP32")
def jmpe_disp32(x):
    _vendor(x, "ia64", "JMPE")

@form("jmpe_rm16", enc="o16 0F 00 /6", bytes="660f007500", asm="jmpe word ptr [ebp]",
      cite="Intel Itanium Architecture SDM Vol. 3, JMPE", code="JMPE_RM16")
def jmpe_rm16(x):
    _vendor(x, "ia64", "JMPE")

@form("jmpe_rm32", enc="o32 0F 00 /6", bytes="0f007500", asm="jmpe dword ptr [ebp]",
      cite="Intel Itanium Architecture SDM Vol. 3, JMPE", code="JMPE_RM32")
def jmpe_rm32(x):
    _vendor(x, "ia64", "JMPE")

@form("loadall286", enc="0F 05", bytes="0f05", asm="loadall286",
      cite="Intel 80286 LOADALL/STOREALL (undocumented; 0F 04/0F 05)", code="LOADALL286")
def loadall286(x):
    _vendor(x, "intel286_only", "LOADALL")

@form("loadall386", enc="0F 07", bytes="0f07", asm="loadall386",
      cite="Intel 80386 LOADALL (undocumented; 0F 07)", code="LOADALL386")
def loadall386(x):
    _vendor(x, "intel386_only", "LOADALL")

@form("montmul_32", enc="a32 F3 0F A6 C0", bytes="f30fa6c0", asm="rep montmul",
      cite="VIA PadLock Programming Guide, PMM (MONTMUL)")
def montmul_32(x):
    _vendor(x, "padlock_pmm", "MONTMUL")

@form("mov_r32_tr", enc="0F 24 /r", bytes="0f24f7", asm="mov edi, tr6",
      cite="SDM Vol. 2B MOV (test registers: 0F 24/0F 26 #UD from the Pentium on)", code="MOV_R32_TR")
def mov_r32_tr(x):
    _vendor(x, "mov_tr", "MOV")

@form("mov_tr_r32", enc="0F 26 /r", bytes="0f26f7", asm="mov tr6, edi",
      cite="SDM Vol. 2B MOV (test registers: 0F 24/0F 26 #UD from the Pentium on)", code="MOV_TR_R32")
def mov_tr_r32(x):
    _vendor(x, "mov_tr", "MOV")

@form("paddsiw_mm_mmm64", enc="0F 51 /r", bytes="0f517500", asm="paddsiw mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PADDSIW_MM_MMM64")
def paddsiw_mm_mmm64(x):
    _vendor(x, "cyrix_emmi", "PADDSIW")

@form("pdistib_mm_m64", enc="0F 54 /r", bytes="0f547500", asm="pdistib mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PDISTIB_MM_M64")
def pdistib_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PDISTIB")

@form("pmachriw_mm_m64", enc="0F 5E /r", bytes="0f5e7500", asm="pmachriw mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMACHRIW_MM_M64")
def pmachriw_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PMACHRIW")

@form("pmulhriw_mm_mmm64", enc="0F 5D /r", bytes="0f5d7500", asm="pmulhriw mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMULHRIW_MM_MMM64")
def pmulhriw_mm_mmm64(x):
    _vendor(x, "cyrix_emmi", "PMULHRIW")

@form("pmvgezb_mm_m64", enc="0F 5C /r", bytes="0f5c7500", asm="pmvgezb mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMVGEZB_MM_M64")
def pmvgezb_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PMVGEZB")

@form("pmvlzb_mm_m64", enc="0F 5B /r", bytes="0f5b7500", asm="pmvlzb mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMVLZB_MM_M64")
def pmvlzb_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PMVLZB")

@form("pmvnzb_mm_m64", enc="0F 5A /r", bytes="0f5a7500", asm="pmvnzb mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMVNZB_MM_M64")
def pmvnzb_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PMVNZB")

@form("pmvzb_mm_m64", enc="0F 58 /r", bytes="0f587500", asm="pmvzb mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PMVZB_MM_M64")
def pmvzb_mm_m64(x):
    _vendor(x, "cyrix_emmi", "PMVZB")

@form("psubsiw_mm_mmm64", enc="0F 55 /r", bytes="0f557500", asm="psubsiw mm6, [ebp]",
      cite="Cyrix 6x86MX Processor Data Book, Extended MMX instructions", code="PSUBSIW_MM_MMM64")
def psubsiw_mm_mmm64(x):
    _vendor(x, "cyrix_emmi", "PSUBSIW")

@form("rdm", enc="0F 3A", bytes="0f3a", asm="rdm",
      cite="AMD Geode LX Processor Data Book (DMI)", code="RDM")
def rdm(x):
    _vendor(x, "cyrix_dmi", "RDM")

@form("rdshr_rm32", enc="0F 36 /0", bytes="0f364500", asm="rdshr [ebp]",
      cite="Cyrix 6x86MX Processor Data Book (RDSHR/WRSHR)", code="RDSHR_RM32")
def rdshr_rm32(x):
    _vendor(x, "cyrix_shr", "RDSHR")

@form("rdudbg", enc="0F 0E", bytes="0f0e", asm="rdudbg",
      cite="UMC Green CPU debug instructions (RDUDBG/WRUDBG)", code="RDUDBG")
def rdudbg(x):
    _vendor(x, "udbg", "RDUDBG")

@form("rsdc_sreg_m80", enc="0F 79 /r", bytes="0f795d00", asm="rsdc ds, [ebp]",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="RSDC_SREG_M80")
def rsdc_sreg_m80(x):
    _vendor(x, "cyrix_smm", "RSDC")

@form("rsldt_m80", enc="0F 7B /0", bytes="0f7b4500", asm="rsldt [ebp]",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="RSLDT_M80")
def rsldt_m80(x):
    _vendor(x, "cyrix_smm", "RSLDT")

@form("rsts_m80", enc="0F 7D /0", bytes="0f7d4500", asm="rsts [ebp]",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="RSTS_M80")
def rsts_m80(x):
    _vendor(x, "cyrix_smm", "RSTS")

@form("smint", enc="0F 38", bytes="0f38", asm="smint",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions (SMINT)", code="SMINT")
def smint(x):
    _vendor(x, "cyrix_smint", "SMINT")

@form("smint_0f7e", enc="0F 7E", bytes="0f7e", asm="smint",
      cite="Cyrix MediaGX Processor Data Book (SMINT 0F 7E)", code="SMINT_0F7E")
def smint_0f7e(x):
    _vendor(x, "cyrix_smint_0f7e", "SMINT")

@form("storeall", enc="0F 04", bytes="0f04", asm="storeall",
      cite="Intel 80286 LOADALL/STOREALL (undocumented; 0F 04/0F 05)", code="STOREALL")
def storeall(x):
    _vendor(x, "intel286_only", "STOREALL")

@form("svdc_m80_sreg", enc="0F 78 /r", bytes="0f785d00", asm="svdc [ebp], ds",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="SVDC_M80_SREG")
def svdc_m80_sreg(x):
    _vendor(x, "cyrix_smm", "SVDC")

@form("svldt_m80", enc="0F 7A /0", bytes="0f7a4500", asm="svldt [ebp]",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="SVLDT_M80")
def svldt_m80(x):
    _vendor(x, "cyrix_smm", "SVLDT")

@form("svts_m80", enc="0F 7C /0", bytes="0f7c4500", asm="svts [ebp]",
      cite="Cyrix 6x86 Processor Data Book, SMM instructions", code="SVTS_M80")
def svts_m80(x):
    _vendor(x, "cyrix_smm", "SVTS")

@form("umov_r16_rm16", enc="o16 0F 13 /r", bytes="660f137500", asm="umov si, [ebp]",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_R16_RM16")
def umov_r16_rm16(x):
    _vendor(x, "umov", "UMOV")

@form("umov_r32_rm32", enc="o32 0F 13 /r", bytes="0f137500", asm="umov esi, [ebp]",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_R32_RM32")
def umov_r32_rm32(x):
    _vendor(x, "umov", "UMOV")

@form("umov_r8_rm8", enc="0F 12 /r", bytes="0f127500", asm="umov dh, [ebp]",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_R8_RM8")
def umov_r8_rm8(x):
    _vendor(x, "umov", "UMOV")

@form("umov_rm16_r16", enc="o16 0F 11 /r", bytes="660f117500", asm="umov [ebp], si",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_RM16_R16")
def umov_rm16_r16(x):
    _vendor(x, "umov", "UMOV")

@form("umov_rm32_r32", enc="o32 0F 11 /r", bytes="0f117500", asm="umov [ebp], esi",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_RM32_R32")
def umov_rm32_r32(x):
    _vendor(x, "umov", "UMOV")

@form("umov_rm8_r8", enc="0F 10 /r", bytes="0f107500", asm="umov [ebp], dh",
      cite="Intel 386/486 in-circuit emulation (UMOV)", code="UMOV_RM8_R8")
def umov_rm8_r8(x):
    _vendor(x, "umov", "UMOV")

@form("wrshr_rm32", enc="0F 37 /0", bytes="0f374500", asm="wrshr [ebp]",
      cite="Cyrix 6x86MX Processor Data Book (RDSHR/WRSHR)", code="WRSHR_RM32")
def wrshr_rm32(x):
    _vendor(x, "cyrix_shr", "WRSHR")

@form("wrudbg", enc="0F 0F", bytes="0f0f", asm="wrudbg",
      cite="UMC Green CPU debug instructions (RDUDBG/WRUDBG)", code="WRUDBG")
def wrudbg(x):
    _vendor(x, "udbg", "WRUDBG")

@form("xcryptcbc_16", enc="a16 F3 0F A7 D0", bytes="67f30fa7d0", asm="addr16 rep xcryptcbc",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptcbc_16(x):
    _vendor(x, "padlock_ace", "XCRYPTCBC")

@form("xcryptcbc_32", enc="a32 F3 0F A7 D0", bytes="f30fa7d0", asm="rep xcryptcbc",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptcbc_32(x):
    _vendor(x, "padlock_ace", "XCRYPTCBC")

@form("xcryptcfb_16", enc="a16 F3 0F A7 E0", bytes="67f30fa7e0", asm="addr16 rep xcryptcfb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptcfb_16(x):
    _vendor(x, "padlock_ace", "XCRYPTCFB")

@form("xcryptcfb_32", enc="a32 F3 0F A7 E0", bytes="f30fa7e0", asm="rep xcryptcfb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptcfb_32(x):
    _vendor(x, "padlock_ace", "XCRYPTCFB")

@form("xcryptctr_16", enc="a16 F3 0F A7 D8", bytes="67f30fa7d8", asm="addr16 rep xcryptctr",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptctr_16(x):
    _vendor(x, "padlock_ace", "XCRYPTCTR")

@form("xcryptctr_32", enc="a32 F3 0F A7 D8", bytes="f30fa7d8", asm="rep xcryptctr",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptctr_32(x):
    _vendor(x, "padlock_ace", "XCRYPTCTR")

@form("xcryptecb_16", enc="a16 F3 0F A7 C8", bytes="67f30fa7c8", asm="addr16 rep xcryptecb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptecb_16(x):
    _vendor(x, "padlock_ace", "XCRYPTECB")

@form("xcryptecb_32", enc="a32 F3 0F A7 C8", bytes="f30fa7c8", asm="rep xcryptecb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptecb_32(x):
    _vendor(x, "padlock_ace", "XCRYPTECB")

@form("xcryptofb_16", enc="a16 F3 0F A7 E8", bytes="67f30fa7e8", asm="addr16 rep xcryptofb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptofb_16(x):
    _vendor(x, "padlock_ace", "XCRYPTOFB")

@form("xcryptofb_32", enc="a32 F3 0F A7 E8", bytes="f30fa7e8", asm="rep xcryptofb",
      cite="VIA PadLock Programming Guide, ACE (XCRYPT)")
def xcryptofb_32(x):
    _vendor(x, "padlock_ace", "XCRYPTOFB")

@form("xsha1_16", enc="a16 F3 0F A6 C8", bytes="67f30fa6c8", asm="addr16 rep xsha1",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha1_16(x):
    _vendor(x, "padlock_phe", "XSHA1")

@form("xsha1_32", enc="a32 F3 0F A6 C8", bytes="f30fa6c8", asm="rep xsha1",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha1_32(x):
    _vendor(x, "padlock_phe", "XSHA1")

@form("xsha256_16", enc="a16 F3 0F A6 D0", bytes="67f30fa6d0", asm="addr16 rep xsha256",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha256_16(x):
    _vendor(x, "padlock_phe", "XSHA256")

@form("xsha256_32", enc="a32 F3 0F A6 D0", bytes="f30fa6d0", asm="rep xsha256",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha256_32(x):
    _vendor(x, "padlock_phe", "XSHA256")

@form("xsha512_16", enc="a16 F3 0F A6 E0", bytes="67f30fa6e0", asm="addr16 rep xsha512",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha512_16(x):
    _vendor(x, "padlock_phe", "XSHA512")

@form("xsha512_32", enc="a32 F3 0F A6 E0", bytes="f30fa6e0", asm="rep xsha512",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha512_32(x):
    _vendor(x, "padlock_phe", "XSHA512")

@form("xsha512_alt_16", enc="a16 F3 0F A6 D8", bytes="67f30fa6d8", asm="addr16 rep xsha512_alt",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha512_alt_16(x):
    _vendor(x, "padlock_phe", "XSHA512_ALT")

@form("xsha512_alt_32", enc="a32 F3 0F A6 D8", bytes="f30fa6d8", asm="rep xsha512_alt",
      cite="VIA PadLock Programming Guide, PHE (XSHA)")
def xsha512_alt_32(x):
    _vendor(x, "padlock_phe", "XSHA512_ALT")

@form("xstore_16", enc="a16 0F A7 C0", bytes="670fa7c0", asm="addr16 xstore",
      cite="VIA PadLock Programming Guide, RNG (XSTORE)")
def xstore_16(x):
    _vendor(x, "padlock_rng", "XSTORE")

@form("xstore_32", enc="a32 0F A7 C0", bytes="0fa7c0", asm="xstore",
      cite="VIA PadLock Programming Guide, RNG (XSTORE)")
def xstore_32(x):
    _vendor(x, "padlock_rng", "XSTORE")

@form("xstore_alt_16", enc="a16 F3 0F A7 F8", bytes="67f30fa7f8", asm="addr16 rep xstore_alt",
      cite="VIA PadLock Programming Guide, RNG (XSTORE)")
def xstore_alt_16(x):
    _vendor(x, "padlock_rng", "XSTORE_ALT")

@form("xstore_alt_32", enc="a32 F3 0F A7 F8", bytes="f30fa7f8", asm="rep xstore_alt",
      cite="VIA PadLock Programming Guide, RNG (XSTORE)")
def xstore_alt_32(x):
    _vendor(x, "padlock_rng", "XSTORE_ALT")
