"""Write model/derived/footprints.json.gz from iced-x86's instruction tables (``make footprints``).

For every iced ``Code`` valid in 32-bit mode (``OpCodeInfo.mode32``) the table records what the
decoder knows of it: opcode and instruction strings, encoding kind, one instance's bytes (built
from the opcode description and checked by decoding it back to the same code), its operands
(where each is found, access, size), the implicit registers and memory operands (stack, [esi],
[edi], ...) with their access, the RFLAGS bits read, written, cleared, set and undefined, the
CPUID features, flow control, lockability, and the derivation decision: derivable, or refused
with a one-line reason.

The decision uses footprints only (registers, memory, flags, flow control, I/O) plus the list
``SYSTEM_TOUCH`` of state the decoder's operand lists cannot show (descriptor-table registers,
MSRs, XCR0, caches/TLB, ...).  The decoder's privilege flags (``cpl0``, ``is_privileged``, ...)
are written under ``oracle`` for the tests only; nothing here reads them.

model/ never imports iced-x86: it reads the written file.  tests/test_footprints.py regenerates
the table from the installed iced-x86 and requires it to equal the committed one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import iced_x86 as I

OUT = Path(__file__).resolve().parent.parent / "model" / "derived" / "footprints.json.gz"
# The CPUID feature names the table's codes need, one per line: pgvirt.model.features reads
# this small file, not the table, to know them (the table is read on first use only).
FEATURES_OUT = OUT.with_name("cpuid_features.txt")
FORMAT = 1


def _names(cls) -> dict[int, str]:
    return {getattr(cls, n): n for n in dir(cls) if not n.startswith("_") and isinstance(getattr(cls, n), int)}


CODE, REG, OPK, ACC, ENC = (_names(I.Code), _names(I.Register), _names(I.OpCodeOperandKind),
                            _names(I.OpAccess), _names(I.EncodingKind))
FLOW, MNEM, CPUID, TABLE = (_names(I.FlowControl), _names(I.Mnemonic), _names(I.CpuidFeature),
                            _names(I.OpCodeTableKind))
DECOPT = _names(I.DecoderOptions)
ENCODING = {"LEGACY": "legacy", "VEX": "vex", "EVEX": "evex", "XOP": "xop", "D3NOW": "3dnow"}
FLAGS = (("of", I.RflagsBits.OF), ("sf", I.RflagsBits.SF), ("zf", I.RflagsBits.ZF),
         ("af", I.RflagsBits.AF), ("cf", I.RflagsBits.CF), ("pf", I.RflagsBits.PF),
         ("df", I.RflagsBits.DF), ("if", I.RflagsBits.IF), ("ac", I.RflagsBits.AC),
         ("uif", I.RflagsBits.UIF), ("c0", I.RflagsBits.C0), ("c1", I.RflagsBits.C1),
         ("c2", I.RflagsBits.C2), ("c3", I.RflagsBits.C3))
SYSTEM_FLAGS = ("if", "ac", "uif")   # EFLAGS bits the model tags SYSTEM (model/state.py)

# The explicit operands of a synthesized instance: ModRM.reg, ModRM.rm (register form),
# VEX/EVEX/XOP.vvvv, the is4 register and the memory base.  Chosen apart from the registers
# instructions use implicitly (EAX, EDX, ECX as a count, ESP, EBX), so that every register the
# decoder lists beyond these is an implicit operand.
FIELDS1 = dict(reg=6, rm=7, vvvv=1, is4=3, opc=6, sti=1)
# A second choice: registers an instruction names only through its instance (a register block
# starting at vvvv, a mask pair, Cyrix's implied MMX register) differ between the two.
FIELDS2 = dict(reg=5, rm=3, vvvv=4, is4=4, opc=3, sti=2)
F = FIELDS1

# State a footprint touches that the decoder's operand lists do not show, by mnemonic.  Each
# entry is why the instruction is hand-written instead of derived (SDM Vol. 2, the instruction's
# page; Vol. 3A chapters named).
SYSTEM_TOUCH = {
    **dict.fromkeys(("LGDT", "SGDT", "LIDT", "SIDT"), "reads or writes GDTR/IDTR (SYSTEM)"),
    **dict.fromkeys(("LLDT", "SLDT", "LTR", "STR"), "reads or writes LDTR/TR (SYSTEM)"),
    **dict.fromkeys(("LMSW", "SMSW", "CLTS"), "reads or writes CR0 (SYSTEM)"),
    **dict.fromkeys(("LAR", "LSL", "VERR", "VERW", "ARPL"),
                    "protection-system reference: descriptor DPL against CPL/RPL (Vol. 3A 5.x)"),
    **dict.fromkeys(("INVD", "WBINVD", "WBNOINVD"), "drops or writes back the caches (SYSTEM caches)"),
    **dict.fromkeys(("INVLPG", "INVLPGA", "INVLPGB", "TLBSYNC", "INVPCID", "INVEPT", "INVVPID"),
                    "invalidates TLB entries (SYSTEM tlb)"),
    "HLT": "halts the processor (SYSTEM halted)",
    **dict.fromkeys(("RDMSR", "WRMSR", "WRMSRNS", "RDPID", "RDPRU", "HRESET", "PTWRITE",
                     "ENQCMD", "ENQCMDS", "PCONFIG"), "reads or writes an MSR"),
    **dict.fromkeys(("RDTSC", "RDTSCP"), "reads the time-stamp counter (SYSTEM tsc; CR4.TSD)"),
    "RDPMC": "reads a performance counter (SYSTEM pmc; CR4.PCE)",
    **dict.fromkeys(("RDRAND", "RDSEED"), "nondeterministic result (hardware random number generator)"),
    "CPUID": "reports processor identification (VM-exit in VMX; hand-written)",
    **dict.fromkeys(("XGETBV", "XSETBV"), "reads or writes XCR0 (SYSTEM)"),
    **dict.fromkeys(("XSAVE", "XSAVEC", "XSAVEOPT", "XSAVES", "XRSTOR", "XRSTORS"),
                    "state components selected by XCR0 (SYSTEM) and XINUSE"),
    **dict.fromkeys(("FXSAVE", "FXRSTOR"), "whether XMM state is saved depends on CR4.OSFXSR (SYSTEM)"),
    **dict.fromkeys(("MONITOR", "MWAIT", "MONITORX", "MWAITX", "UMONITOR", "UMWAIT", "TPAUSE"),
                    "address monitoring and wait states (SYSTEM; MSR-controlled)"),
    **dict.fromkeys(("SYSENTER", "SYSEXIT", "SYSCALL", "SYSRET"), "fast system call: MSRs, CS/SS loads"),
    **dict.fromkeys(("GETSEC", "ENCLS", "ENCLU", "ENCLV", "SKINIT", "STGI", "CLGI", "RSM",
                     "VMCALL", "VMCLEAR", "VMFUNC", "VMLAUNCH", "VMLOAD", "VMMCALL", "VMPTRLD",
                     "VMPTRST", "VMREAD", "VMRESUME", "VMRUN", "VMSAVE", "VMWRITE", "VMXOFF",
                     "VMXON", "VMGEXIT", "PVALIDATE", "TDCALL", "RMPQUERY"),
                    "SMX/SGX/VMX/SVM/SMM/TDX system instruction"),
    **dict.fromkeys(("LOADALL", "STOREALL", "SMINT", "DMINT", "RDM", "SVDC", "RSDC", "SVLDT",
                     "RSLDT", "SVTS", "RSTS", "RDSHR", "WRSHR", "CPU_READ", "CPU_WRITE",
                     "BB0_RESET", "BB1_RESET", "ALTINST", "JMPE", "RDUDBG", "WRUDBG",
                     "CL1INVMB", "UMOV", "FNSETPM", "FSETPM", "FRSTPM"),
                    "vendor system/SMM/ICE instruction (loads or stores hidden processor state)"),
    **dict.fromkeys(("RDSSPD", "INCSSPD", "WRSSD", "WRUSSD", "SAVEPREVSSP", "RSTORSSP",
                     "SETSSBSY", "CLRSSBSY"), "CET shadow stack: SSP and CET MSRs (SYSTEM)"),
    **dict.fromkeys(("RDPKRU", "WRPKRU"), "#UD unless CR4.PKE: protection keys not modelled"),
    **dict.fromkeys(("XBEGIN", "XEND", "XABORT", "XTEST", "XSUSLDTRK", "XRESLDTRK"),
                    "transactional execution state (RTM/TSXLDTRK) not modelled: hand-written"),
    **dict.fromkeys(("AESENC128KL", "AESDEC128KL", "AESENC256KL", "AESDEC256KL", "AESENCWIDE128KL",
                     "AESDECWIDE128KL", "AESENCWIDE256KL", "AESDECWIDE256KL", "ENCODEKEY128",
                     "ENCODEKEY256", "LOADIWKEY"), "Key Locker internal wrapping key (system state)"),
    **dict.fromkeys(("XCRYPTECB", "XCRYPTCBC", "XCRYPTCTR", "XCRYPTCFB", "XCRYPTOFB", "XSHA1",
                     "XSHA256", "XSHA512", "XSHA512_ALT", "MONTMUL", "XSTORE", "XSTORE_ALT",
                     "CCS_HASH", "CCS_ENCRYPT"),
                    "PadLock/Zhaoxin block operation: memory footprint sized by ECX and a control block"),
    **dict.fromkeys(("BNDMK", "BNDCL", "BNDCU", "BNDCN", "BNDMOV", "BNDLDX", "BNDSTX"),
                    "MPX: enabled by BNDCFGS (an MSR) at CPL 0, BNDCFGU at CPL 3"),
    "CLZERO": "zeroes the cache line holding [EAX]: an address rounded down, no operand template",
    "MOVDIR64B": "64-byte direct store to ES:[r32] (address from a register operand)",
    "MCOMMIT": "commits stores to persistent memory (SEV-SNP; platform state)",
    "PCOMMIT": "commits stores to persistent memory (platform state)",
    "ENTER": "ENTER's nesting level (imm8) copies that many frame pointers: footprint varies with the instance",
}
# Stores that write only the bytes a mask selects (SDM Vol. 2B MASKMOVQ, MASKMOVDQU; Vol. 2C
# VMASKMOV, VPMASKMOV): iced lists their memory operand as written; the frame test showed the
# bytes not selected keep their value, so the model makes the store conditional.
BYTE_MASKED_STORES = ("MASKMOVQ", "MASKMOVDQU", "VMASKMOVDQU", "VMASKMOVPS", "VMASKMOVPD",
                      "VPMASKMOVD", "VPMASKMOVQ")
FAR = ("CALL_M16", "CALL_PTR", "JMP_M16", "JMP_PTR", "RETF", "IRET")
# Bit-string instructions with a register bit offset address memory beyond the operand
# (SDM Vol. 2A BT: "the bit offset ... can also be used to address memory").
BIT_STRING_REG = ("BT", "BTS", "BTR", "BTC")


# Codes valid in 32-bit mode by the table that iced's 32-bit decoder never returns.
UNDECODABLE = {
    "POPW_CS": "8086-only POP CS: 0F is the two-byte escape from the 80286 on",
    "MONTMUL_16": "iced decodes no 16-bit-address MONTMUL in 32-bit mode",
    **dict.fromkeys(("FSTENV_M14BYTE", "FSTENV_M28BYTE", "FSTCW_M2BYTE", "FENI", "FDISI", "FCLEX",
                     "FINIT", "FSETPM", "FSAVE_M94BYTE", "FSAVE_M108BYTE", "FSTSW_M2BYTE",
                     "FSTSW_AX", "FSTDW_AX", "FSTSG_AX"),
                    "WAIT + no-wait form: decoders return two instructions (WAIT, then FNxxx)"),
}


def _mem_size(ms: int) -> int:
    return I.MemorySizeInfo(ms).size if ms else 0


def _prefix_bytes(o) -> list[int]:
    out = []
    if o.operand_size == 16:
        out.append(0x66)
    if o.address_size == 16:
        out.append(0x67)
    mp = o.mandatory_prefix
    if mp == I.MandatoryPrefix.P66 and 0x66 not in out:
        out.append(0x66)
    elif mp == I.MandatoryPrefix.PF3:
        out.append(0xF3)
    elif mp == I.MandatoryPrefix.PF2:
        out.append(0xF2)
    return out


_PP = {I.MandatoryPrefix.P66: 1, I.MandatoryPrefix.PF3: 2, I.MandatoryPrefix.PF2: 3}
_VEX_MAP = {I.OpCodeTableKind.T0F: 1, I.OpCodeTableKind.T0F38: 2, I.OpCodeTableKind.T0F3A: 3,
            I.OpCodeTableKind.MAP5: 5, I.OpCodeTableKind.MAP6: 6, I.OpCodeTableKind.MAP8: 8,
            I.OpCodeTableKind.MAP9: 9, I.OpCodeTableKind.MAP10: 10}
_LEGACY_ESC = {I.OpCodeTableKind.NORMAL: [], I.OpCodeTableKind.T0F: [0x0F],
               I.OpCodeTableKind.T0F38: [0x0F, 0x38], I.OpCodeTableKind.T0F3A: [0x0F, 0x3A]}


def _tokens(o) -> list[str]:
    return o.op_code_string.split()


def _has_modrm(o) -> bool:
    return any(t.startswith("/") or ":" in t for t in _tokens(o))


def _uses(o, *frag: str) -> bool:
    return any(any(f in OPK[o.op_kind(i)] for f in frag) for i in range(o.op_count))


def _modrms(o) -> list[list[int]]:
    """ModRM (+SIB, displacement) choices: register form, memory [ebp+0], VSIB [ebp+xmm2];
    ModRM.reg falls back to 3 and 0 where the field names a short register file (Sreg, CRn, BNDn)."""
    regs = [o.group_index] if o.is_group else [F["reg"], 3, 0, 2]
    out = []
    for reg in regs:
        if o.is_rm_group:
            out.append([0xC0 | (reg << 3) | o.rm_group_index])
        else:
            out.append([0xC0 | (reg << 3) | F["rm"]])
            out.append([0x40 | (reg << 3) | 5, 0x00])
            out.append([0x44 | (reg << 3), (2 << 3) | 5, 0x00])
    return out


def _tail(o) -> list[int]:
    t = [0] * 8
    if _uses(o, "_IS4", "_IS5"):
        t[0] = F["is4"] << 4
    return t


def candidates(o) -> list[bytes]:
    """Instances to try for code ``o``, from its opcode description (decoded to check)."""
    enc = ENC[o.encoding]
    ops = o.op_code.to_bytes(o.op_code_len, "big")
    vvvv = [F["vvvv"], 0] if _uses(o, "VVVV") else [0]
    out: list[bytes] = []
    plus = list(ops)
    if any(t.endswith(("+rd", "+rw", "+rb")) for t in _tokens(o)):
        plus[-1] += F["opc"]
    elif any(t.endswith("+i") for t in _tokens(o)):
        plus[-1] += F["sti"]
    modrms = _modrms(o) if _has_modrm(o) else [[]]
    if enc == "LEGACY":
        wait = [0x9B] if o.fwait else []
        pre = _prefix_bytes(o)
        for order in (pre, pre[::-1]):
            for m in modrms:
                out.append(bytes(wait + order + _LEGACY_ESC[o.table] + plus + m + _tail(o)))
    elif enc == "D3NOW":
        for m in _modrms(o):
            out.append(bytes([0x0F, 0x0F] + m + [o.op_code] + [0] * 4))
    elif enc in ("VEX", "XOP"):
        mp = _PP.get(o.mandatory_prefix, 0)
        for v in vvvv:
            for m in modrms:
                b1 = 0xE0 | _VEX_MAP[o.table]
                b2 = (o.w << 7) | ((~v & 0xF) << 3) | (min(o.l, 1) << 2) | mp
                out.append(bytes([0xC4 if enc == "VEX" else 0x8F, b1, b2] + plus + m + _tail(o)))
    elif enc == "EVEX":
        mp = _PP.get(o.mandatory_prefix, 0)
        aaa = 1 if (o.require_op_mask_register or _uses(o, "VSIB")) else 0
        for v in vvvv:
            for m in modrms:
                p0 = 0xF0 | _VEX_MAP[o.table]
                p1 = (o.w << 7) | ((~v & 0xF) << 3) | 4 | mp
                p2 = (min(o.l, 3) << 5) | 0x08 | aaa
                out.append(bytes([0x62, p0, p1, p2] + plus + m + _tail(o)))
    return out


def example(code: int, o) -> tuple[list[bytes], object | None, int]:
    """Every candidate instance that decodes to ``code`` (bytes cut to its length)."""
    found, first = [], None
    # UD0 without ModRM is AMD's decoding of 0F FF; the table names no option for it.
    for opt in (o.decoder_option, I.DecoderOptions.AMD):
        for cand in candidates(o):
            ins = I.Decoder(32, cand, opt).decode()
            if ins.code == code and not ins.is_invalid:
                b = cand[:ins.len]
                # One register-form and one memory-form instance are enough.
                if not found or (len(found) == 1 and _is_mem(ins) != _is_mem(first)):
                    found.append(b)
                    first = first or ins
        if found:
            # The footprint is read from the memory-form instance where there is one: it lists
            # the explicit memory operand; register operands are the instance's either way.
            # It is also the canonical instance (what a classification runs): memory operands
            # bring the alignment and #AC checks the register form lacks.
            mem = [b for b in found if _is_mem(I.Decoder(32, b, opt).decode())]
            if mem:
                first = I.Decoder(32, mem[0], opt).decode()
                found = mem[:1] + [b for b in found if b != mem[0]]
            return found, first, opt
    return found, first, opt


def _is_mem(ins) -> bool:
    return any(ins.op_kind(i) == I.OpKind.MEMORY for i in range(ins.op_count))


def _flags(mask: int) -> list[str]:
    return [n for n, b in FLAGS if mask & b]


def _reg_name(r: int) -> str:
    return REG[r].lower()


def footprint(ins, o) -> dict:
    """What one decoded instance reads and writes, split into explicit and implicit parts."""
    info = I.InstructionInfoFactory().info(ins)
    explicit_regs = set()
    operands = []
    mem_explicit = None
    mem_from = None
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        acc = ACC[info.op_access(i)].lower()
        okind = OPK[o.op_kind(i)].lower()
        entry = {"kind": okind, "access": acc}
        if kind == I.OpKind.REGISTER:
            r = ins.op_register(i)
            explicit_regs.add(r)
            entry["size"] = I.RegisterInfo(r).size
        elif kind == I.OpKind.MEMORY:
            mem_explicit = ins
            ok = OPK[o.op_kind(i)]
            mem_from = "moffs" if ok == "MEM_OFFS" else None if ok.startswith(("SEG_R", "ES_R")) else "modrm"
            entry["size"] = _mem_size(ins.memory_size)
            if mem_from == "modrm":   # an implicit operand's registers ([ebx+al]) stay implicit
                for r in (ins.memory_base, ins.memory_index):
                    if r != I.Register.NONE:
                        explicit_regs.add(r)
        operands.append(entry)
    opmask = None
    if ins.op_mask != I.Register.NONE:
        explicit_regs.add(ins.op_mask)
        opmask = next((ACC[u.access].lower() for u in info.used_registers() if u.register == ins.op_mask),
                      "read")
    implicit = []
    # A VEX/EVEX write of XMMn/YMMn is listed again as a write of ZMMn (the upper bits are
    # zeroed): part of the explicit operand, which the model widens itself.
    full = {I.RegisterInfo(r).full_register for r in explicit_regs}
    for u in info.used_registers():
        r = u.register
        if r in explicit_regs or I.RegisterInfo(r).full_register in full:
            continue
        if mem_explicit is not None and r == ins.memory_segment and u.access == I.OpAccess.READ:
            continue  # the memory operand's segment: its base is the address space
        implicit.append({"reg": _reg_name(r), "access": ACC[u.access].lower()})
    memory = []
    for m in info.used_memory():
        is_explicit = (mem_from is not None and m.base == ins.memory_base and m.index == ins.memory_index
                       and m.displacement == (ins.memory_displacement & 0xFFFFFFFF))
        disp = m.displacement
        if disp >= 1 << 31:
            disp -= 1 << 32
        memory.append({"explicit": mem_from if is_explicit else None, "seg": _reg_name(m.segment),
                       "base": None if m.base == I.Register.NONE else _reg_name(m.base),
                       "index": None if m.index == I.Register.NONE else _reg_name(m.index),
                       "scale": m.scale, "disp": 0 if is_explicit else disp,
                       "size": _mem_size(m.memory_size), "access": ACC[m.access].lower(),
                       "vsib": bool(m.vsib_size)})
    if mem_from is not None and not any(m["explicit"] for m in memory):
        # LEA, multi-byte NOPs: the operand is an address the decoder lists no access for
        i = next(i for i in range(ins.op_count) if ins.op_kind(i) == I.OpKind.MEMORY)
        memory.append({"explicit": mem_from, "seg": _reg_name(ins.memory_segment),
                       "base": None, "index": None, "scale": 1, "disp": 0, "size": 0,
                       "access": ACC[info.op_access(i)].lower(), "vsib": False})
    if MNEM[ins.mnemonic] in BIT_STRING_REG and any(OPK[o.op_kind(i)].endswith("_REG")
                                                    for i in range(o.op_count)):
        for m in memory:
            if m["explicit"] == "modrm":
                m["bitstring"] = True
                m["note"] = ("the register bit offset selects the operand: "
                             "ea + size * (offset >> log2(8 * size)), signed (SDM Vol. 2A BT)")
    if MNEM[ins.mnemonic] in BYTE_MASKED_STORES:
        for m in memory:
            if m["access"] == "write":
                m["access"] = "cond_write"
                m["note"] = "byte-masked store: bytes whose mask bit is clear keep their value"
    vsib = None
    for i in range(o.op_count):
        k = OPK[o.op_kind(i)]
        if k.startswith("MEM_VSIB"):
            vsib = {"index_width": 4 if "32" in k else 8,
                    "index_bytes": {"X": 16, "Y": 32, "Z": 64}[k[-1]]}
    out = {"operands": operands, "implicit": implicit, "memory": memory,
            "rflags": {"read": _flags(ins.rflags_read), "written": _flags(ins.rflags_written),
                       "cleared": _flags(ins.rflags_cleared), "set": _flags(ins.rflags_set),
                       "undefined": _flags(ins.rflags_undefined)}}
    if opmask is not None:
        out["opmask"] = opmask
    if vsib is not None:
        out["vsib"] = vsib
    return out


def _layout(o) -> dict:
    """How the model finds this code's operands in an instance's bytes (model/derived/operands.py)."""
    toks = _tokens(o)
    imm = []
    for t in toks:
        if t in ("ib", "iw", "id", "cb", "cw", "cd", "cp", "mo"):
            imm.append(t)
    if _uses(o, "_IS4", "_IS5") and "ib" not in imm:
        imm.append("ib")
    enc = ENCODING[ENC[o.encoding]]
    return {"map": (_VEX_MAP.get(o.table, 0) if enc != "legacy" else o.table),
            "opcode": o.op_code.to_bytes(o.op_code_len, "big").hex(),
            "plus": ("r" if any(t.endswith(("+rd", "+rw", "+rb")) for t in toks)
                     else "i" if any(t.endswith("+i") for t in toks) else None),
            "modrm": _has_modrm(o) or enc == "3dnow",
            "imm": imm, "opsize": o.operand_size, "addrsize": o.address_size,
            "mandatory": {I.MandatoryPrefix.P66: "66", I.MandatoryPrefix.PF3: "f3",
                          I.MandatoryPrefix.PF2: "f2"}.get(o.mandatory_prefix)}


def disp8_scale(found: list[bytes], opt: int, code: int) -> dict:
    """EVEX compressed displacement: the factor N a disp8 is scaled by (SDM Vol. 2A 2.7.5),
    without and with broadcast, read from the decoder on the memory-form instance."""
    out = {}
    for b in found:
        ins = I.Decoder(32, b, opt).decode()
        off = I.Decoder(32, b, opt)
        co = off.get_constant_offsets(off.decode())
        if not _is_mem(ins) or co.displacement_size != 1:
            continue
        raw = bytearray(b)
        raw[co.displacement_offset] = 1
        out["disp8n"] = I.Decoder(32, bytes(raw), opt).decode().memory_displacement
        raw[3] |= 0x10                       # EVEX.b
        bc = I.Decoder(32, bytes(raw), opt).decode()
        if bc.code == code and bc.is_broadcast:
            out["disp8n_bcst"] = bc.memory_displacement
    return out


def decide(rec: dict, o) -> tuple[bool, str]:
    """Derivable, or refused with a one-line reason.  Never reads the privilege flags."""
    mn = rec["mnemonic"]
    fp = rec["footprint"]
    flow = rec["flow"]
    if flow in ("interrupt", "exception"):
        return False, f"{flow} flow control (a trap or gate transfer): hand-written"
    if mn in SYSTEM_TOUCH:
        return False, SYSTEM_TOUCH[mn]
    if rec["code"].startswith(FAR):
        return False, "far control transfer (CS load, gates): hand-written"
    if rec["io"]:
        return False, "I/O port access (IOPL, I/O bitmap): hand-written"
    regs = [(op["kind"], op["access"]) for op in fp["operands"]]
    for kind, acc in regs:
        if kind in ("cr_reg", "dr_reg", "tr_reg"):
            return False, f"reads or writes a {kind[:2].upper()} register (SYSTEM)"
        if kind in ("seg_reg", "cs", "ds", "es", "ss", "fs", "gs"):
            return False, "segment register operand (selector load or RPL = CPL): hand-written"
    for r in fp["implicit"]:
        if r["reg"] in ("es", "cs", "ss", "ds", "fs", "gs"):
            if "write" in r["access"]:
                return False, f"writes segment register {r['reg'].upper()}"
            if r["reg"] in ("cs", "ss") and r["access"] != "read":
                return False, f"reads {r['reg'].upper()} (its RPL is the CPL)"
        if r["reg"].startswith(("cr", "dr", "tr", "gdtr", "idtr", "ldtr", "xcr", "mxcsr_", "tmm")):
            return False, f"implicit {r['reg'].upper()} (SYSTEM or not modelled)"
        if r["reg"].startswith("bnd"):
            return False, "MPX bounds registers (BNDCFGS is an MSR)"
    if rec.get("instance_regs") and not any(k in op["kind"] for op in fp["operands"]
                                            for k in ("p3_vvvv", "kp1_reg")):
        return False, "registers implied by the instance (Cyrix EMMI partner register): not modelled"
    fl = fp["rflags"]
    touched = set(fl["read"]) | set(fl["written"]) | set(fl["cleared"]) | set(fl["set"]) | set(fl["undefined"])
    sysf = sorted(touched & set(SYSTEM_FLAGS))
    if sysf:
        return False, f"reads or writes EFLAGS.{'/'.join(f.upper() for f in sysf)} (SYSTEM)"
    for m in fp["memory"]:
        if m["size"] == 0 and m["access"] not in ("no_mem_access", "none"):
            return False, "memory operand of unknown size"
        if m["seg"] not in ("es", "cs", "ss", "ds", "fs", "gs"):
            return False, f"memory operand through {m['seg']}"
    for op in fp["operands"]:
        if op["kind"].startswith("mem_mpx") or op["kind"].startswith("bnd") or op["kind"] == "mem_mib":
            return False, "MPX operand (BNDCFGS is an MSR)"
    return True, ""


def build() -> dict:
    codes = {}
    missing: list[str] = []
    for v, name in sorted(CODE.items()):
        o = I.OpCodeInfo(v)
        if not o.mode32:
            continue
        enc = ENC[o.encoding]
        rec: dict = {"code": name, "op_code": o.op_code_string, "instruction": o.instruction_string,
                     "encoding": ENCODING.get(enc, enc.lower()), "mnemonic": MNEM[o.mnemonic]}
        if not o.is_instruction:
            rec.update(decision={"derive": False, "reason": "not an instruction (decoder pseudo-code)"})
            codes[name] = rec
            continue
        found, ins, opt = example(v, o)
        if ins is None:
            if name in UNDECODABLE:
                rec.update(decision={"derive": False, "reason": UNDECODABLE[name]})
                codes[name] = rec
                continue
            missing.append(f"{name} ({o.op_code_string})")
            continue
        rec.update(decoder_option=DECOPT.get(opt) if opt else None,
                   bytes=found[0].hex(), alt_bytes=[b.hex() for b in found[1:]],
                   asm=I.Formatter(I.FormatterSyntax.INTEL).format(I.Decoder(32, found[0], opt).decode()),
                   layout=_layout(o),
                   footprint=footprint(ins, o),
                   cpuid=sorted(CPUID[f].lower() for f in ins.cpuid_features()),
                   flow=FLOW[ins.flow_control].lower(), lock=o.can_use_lock_prefix,
                   rep=o.can_use_rep_prefix, repne=o.can_use_repne_prefix,
                   io=o.is_input_output, fpu_no_wait=o.is_fpu_no_wait,
                   string=ins.is_string_instruction, opmask=o.can_use_op_mask_register,
                   zeroing=o.can_use_zeroing_masking, broadcast=o.can_broadcast,
                   bcst_size=_mem_size(o.broadcast_memory_size) if o.can_broadcast else 0,
                   oracle={"cpl0": o.cpl0, "cpl3": o.cpl3, "privileged": o.is_privileged,
                           "must_be_cpl0": o.must_be_cpl0, "may_require_cpl0": o.may_require_cpl0})
        global F
        F = FIELDS2
        found2, ins2, _ = example(v, o)
        F = FIELDS1
        imp = rec["footprint"]["implicit"]
        imp2 = footprint(ins2, o)["implicit"] if ins2 is not None else imp
        if imp != imp2:
            rec["footprint"]["implicit"] = [r for r in imp if r in imp2]
            rec["instance_regs"] = sorted({r["reg"] for r in imp + imp2 if not (r in imp and r in imp2)})
        if rec["encoding"] == "evex":
            rec["layout"].update(disp8_scale(found, opt, v))
        ok, why = decide(rec, o)
        rec["decision"] = {"derive": ok, "reason": why}
        codes[name] = rec
    hand: dict[str, list[str]] = {}
    for f in hand_forms():
        # a vendor form's bytes decode to its Code only with that Code's decoder option
        opt = getattr(I.DecoderOptions, codes[f.code]["decoder_option"] or "NONE") if f.code in codes else 0
        ins = I.Decoder(32, f.bytes, opt).decode()
        if f.code and CODE[ins.code] != f.code:
            raise SystemExit(f"tools/footprints.py: hand form {f.name}'s bytes {f.bytes.hex()} "
                             f"decode to {CODE[ins.code]}, not its code {f.code}")
        if ins.is_invalid and f.bytes in _INVALID_HERE:
            continue        # a form of bytes that are #UD in 32-bit mode: no code to cover
        if ins.is_invalid or ins.len != len(f.bytes):
            raise SystemExit(f"tools/footprints.py: hand form {f.name}'s bytes {f.bytes.hex()} "
                             "do not decode as one instruction")
        hand.setdefault(CODE[ins.code], []).append(f.name)
    if missing:
        raise SystemExit("tools/footprints.py: no synthesized instance decodes back to: " + ", ".join(missing))
    return {"format": FORMAT, "iced_x86": _iced_version(), "codes": codes,
            "hand": {k: sorted(v) for k, v in sorted(hand.items())}}


# Hand forms whose canonical bytes no decoder takes in 32-bit mode: instructions valid only in
# 64-bit mode that the model defines as #UD here (SDM Vol. 2B SWAPGS: #UD outside 64-bit mode).
_INVALID_HERE = {bytes.fromhex("0f01f8")}


def hand_forms():
    """The hand-written forms: a code one of them decodes to is not derived."""
    from pgvirt.model import isa
    return isa.FORMS


def _iced_version() -> str:
    from importlib.metadata import version
    return version("iced-x86")


def dump(doc: dict) -> bytes:
    """Deterministic bytes: sorted JSON, gzip without a timestamp."""
    raw = json.dumps(doc, sort_keys=True, indent=0, separators=(",", ":")).encode()
    return gzip.compress(raw, compresslevel=9, mtime=0)


def feature_names(doc: dict) -> bytes:
    names = sorted({f for rec in doc["codes"].values() for f in rec.get("cpuid", ())})
    return ("\n".join(names) + "\n").encode()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(OUT))
    args = ap.parse_args(argv)
    doc = build()
    out = Path(args.output)
    for path, data in ((out, dump(doc)), (out.with_name(FEATURES_OUT.name), feature_names(doc))):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        print(f"{path}: {len(data)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
