"""Forms derived from footprints: results are uninterpreted functions of exactly what the
footprint reads, written exactly where it writes (docs/derived.md).

For one instance (its operands from ``operands.decode``) the semantics

1. run the shared architectural-fault checks (``faults``: LOCK, CPUID, CR0/CR4/XCR0, alignment,
   #AC; then the faults of the data);
2. collect the inputs: every register and memory operand the footprint reads, the implicit
   registers and memory (stack, [esi], [edi], [ebx+al]), the RFLAGS bits read, the x87 state for
   x87/MMX forms (over-approximated: all of R0-R7, FCW, FSW, FTW and the last pointers), MXCSR for
   SSE/AVX, the opmask register of a masked EVEX instance, ECX for REP, the immediate bytes and
   the static encoding bits, EIP and the length for branches;
3. write each destination with ``z3.Function(f"{code}.{destination}", inputs)(inputs)`` - the old
   value joins the inputs of a conditional write (CondWrite, a masked EVEX write, REP);
   VEX/EVEX/XOP register writes are writes of the whole ZMM (SDM Vol. 1 14.1.2), legacy SSE
   writes keep the upper bits, 8/16-bit GPR writes keep the rest of the register; RFLAGS bits
   the footprint clears or sets are 0/1, those it writes or leaves undefined functions.

Two forms with the same footprint shape thus give alpha-equivalent queries.
"""

from __future__ import annotations

from functools import lru_cache

import z3

from .. import state as st
from ..encoding import EncodingError
from ..form import Form
from . import faults, table
from .uf import function
from .operands import Instance, decode

READS = ("read", "read_write", "cond_read", "read_cond_write")
WRITES = ("write", "read_write", "cond_write", "read_cond_write")
CONDITIONAL = ("cond_write", "read_cond_write")
BRANCH_FLOWS = ("unconditional_branch", "conditional_branch", "indirect_branch", "call",
                "indirect_call", "return")
USER_FLAG_BITS = {"of": st.OF, "sf": st.SF, "zf": st.ZF, "af": st.AF, "cf": st.CF, "pf": st.PF,
                  "df": st.DF}
GPR8 = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
GPR16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
X87_STATE = st.FPRS + ("fcw", "fsw", "ftw", "fop", "fip", "fcs", "fdp", "fds")
X87_POINTERS = ("fop", "fip", "fcs", "fdp", "fds")


def _gpr(n: int, size: int):
    if size == 4:
        return (st.GPRS[n], 0, 32)
    if size == 2:
        return (st.GPRS[n], 0, 16)
    return (st.GPRS[n & 3], 8 if n & 4 else 0, 8)


def reg_loc(name: str):
    """(field, low bit, width) of a register the decoder names ("eax", "ah", "xmm3", "k1" ...)."""
    if name in st.GPRS:
        return (name, 0, 32)
    if name in GPR16:
        return _gpr(GPR16.index(name), 2)
    if name in GPR8:
        return _gpr(GPR8.index(name), 1)
    for pre, width in (("xmm", 128), ("ymm", 256), ("zmm", 512)):
        if name.startswith(pre):
            return (f"zmm{name[3:]}", 0, width)
    if name.startswith("mm"):
        return (f"fpr{name[2:]}", 0, 64)
    if name.startswith("k") and name[1:].isdigit():
        return (name, 0, 64)
    raise KeyError(name)


_VEC = {"xmm": 128, "ymm": 256, "zmm": 512}


def operand_loc(kind: str, size: int, d: Instance):
    """Where a register operand of ``kind`` is in this instance, or None if it is not a
    register (memory, immediate, branch target, ST(i): x87 forms read all of R0-R7)."""
    if kind in ("al", "ax", "eax", "cl", "dx"):
        return reg_loc(kind)
    fam, _, where = kind.partition("_")
    if where in ("or_mem", "rm") and d.is_mem:
        return None
    num = {"reg": d.reg, "rm": d.rm, "or_mem": d.rm, "vvvv": d.vvvv, "opcode": d.opreg,
           "is4": d.is4, "is5": d.is4}.get(where)
    if fam in ("r8", "r16", "r32") and num is not None:
        return _gpr(num, {"r8": 1, "r16": 2, "r32": 4}[fam])
    if fam in _VEC and num is not None:
        return (f"zmm{num}", 0, _VEC[fam])
    if fam == "mm" and num is not None:
        return (f"fpr{num}", 0, 64)
    if fam == "k" and num is not None:
        return (f"k{num}", 0, 64)
    return None


def _read(x, loc):
    field, lo, w = loc
    v = x.read(field)
    return v if lo == 0 and w == v.size() else z3.Extract(lo + w - 1, lo, v)


def _write(x, loc, value, whole: bool = False) -> None:
    field, lo, w = loc
    old = x.read(field)
    full = old.size()
    if whole or (lo == 0 and w == full):
        x.write(field, z3.ZeroExt(full - w, value) if w < full else value)
        return
    parts = []
    if lo + w < full:
        parts.append(z3.Extract(full - 1, lo + w, old))
    parts.append(value)
    if lo:
        parts.append(z3.Extract(lo - 1, 0, old))
    x.write(field, z3.Concat(*parts))


def _offset(x, d: Instance, base, index, scale: int, disp: int, index8: bool = False,
            wide_base: bool = False):
    """Effective offset; 16-bit addressing wraps at 64 KiB (SDM Vol. 2A 2.1.5)."""
    off = z3.BitVecVal(disp, 32)
    if base is not None:
        off = off + x.read(st.GPRS[base])
    if index is not None:
        idx = z3.ZeroExt(24, z3.Extract(7, 0, x.read("eax"))) if index8 else x.read(st.GPRS[index])
        off = off + idx * scale
    if d.addr16 and not wide_base:
        off = z3.ZeroExt(16, z3.Extract(15, 0, off))
    return off


def _vsib_offsets(x, d: Instance, vsib: dict, elem: int, ops: list) -> list:
    """Offsets of a VSIB operand's elements: base + sign-extended index lane * scale + disp,
    for as many lanes as both the index and the data vector have."""
    iw, ib = vsib["index_width"], vsib["index_bytes"]
    data = max((op.get("size", 0) for op in ops if op["kind"].startswith(("xmm_reg", "ymm_reg", "zmm_reg"))),
               default=ib)
    lanes = min(ib // iw, data // elem)
    vec = x.read(f"zmm{d.sib_index}")
    out = []
    for i in range(lanes):
        lane = z3.Extract(8 * iw * (i + 1) - 1, 8 * iw * i, vec)
        idx = z3.Extract(31, 0, lane) if iw == 8 else lane
        off = z3.BitVecVal(d.disp, 32) + idx * d.scale
        if d.base is not None:
            off = off + x.read(st.GPRS[d.base])
        out.append(off)
    return out


class _Plan:
    """What an instance reads and writes, before any term is built."""

    def __init__(self) -> None:
        self.reads: list = []       # (key, term)
        self.writes: list = []      # (dest name, kind, target, width, conditional)

    def read(self, key, term) -> None:
        if all(k != key for k, _ in self.reads):
            self.reads.append((key, term))


def _uf(name: str, inputs: list, width: int):
    if not inputs:
        return z3.BitVec(name, width)
    return function(name, inputs, z3.BitVecSort(width))(*inputs)


def semantics(rec: dict):
    """The semantics of code ``rec`` (one table record) as a form body."""
    code = rec["code"]
    fp = rec["footprint"]
    cls = faults.classes(rec)
    x87 = bool(cls & {"x87", "wait"})
    mmx = "mmx" in cls
    simd = bool(cls & {"sse", "avx"})
    widen = rec["encoding"] in ("vex", "evex", "xop")
    flow = rec["flow"]
    mn = rec["mnemonic"]
    bcst = rec.get("bcst_size", 0)
    pointers = x87 and mn not in faults.X87_CONTROL
    flags = fp["rflags"]
    vsib = fp.get("vsib")
    opmask_access = fp.get("opmask", "read")

    def body(x) -> None:
        d: Instance = x.d
        p = _Plan()
        mem_ops = []                            # (linear, offset, size, access, seg)
        for m in fp["memory"]:
            if m["explicit"] == "modrm" and vsib and d.is_mem and m["access"] != "no_mem_access":
                # a gather/scatter: one element per index lane (SDM Vol. 2A 2.3.12)
                seg = d.default_seg
                for off in _vsib_offsets(x, d, vsib, m["size"], fp["operands"]):
                    mem_ops.append((x.seg_base(seg) + off, off, m["size"], m["access"], seg))
                continue
            if m["explicit"] == "modrm":
                if not d.is_mem:
                    continue
                seg = d.default_seg
                off = _offset(x, d, d.base, d.index, d.scale, d.disp)
                size = bcst if (d.b and bcst) else m["size"]
                if m.get("bitstring"):
                    # BT/BTS/BTR/BTC m, r: the bit offset is signed and reaches other words
                    bits = z3.Extract(8 * size - 1, 0, x.read(st.GPRS[d.reg]))
                    shift = {2: 4, 4: 5}[size]
                    words = z3.SignExt(32 - 8 * size, bits >> shift) if size < 4 else bits >> shift
                    off = off + words * size
            elif m["explicit"] == "moffs":
                seg = d.seg or "ds"
                off = z3.BitVecVal(d.moffs, 32)
                size = m["size"]
            else:
                seg = d.seg if (m["seg"] == "ds" and d.seg) else m["seg"]
                base = None if m["base"] is None else _name_num(m["base"])
                index8 = m["index"] == "al"
                index = None if m["index"] is None else (0 if index8 else _name_num(m["index"]))
                wide = m["base"] in ("esp", "sp")   # the stack's size is SS.B's, not 67's
                off = _offset(x, d, base, index, m["scale"], m["disp"] & 0xFFFFFFFF, index8, wide)
                size = m["size"]
            mem_ops.append((x.seg_base(seg) + off, off, size, m["access"], seg))
        mem_dest = any(a in WRITES for _, _, _, a, _ in mem_ops)
        faults.check_lock(x, rec, mem_dest)
        faults.check_features(x, rec)
        faults.check_state(x, cls)
        for linear, _, size, access, _ in mem_ops:
            if access != "no_mem_access":
                faults.check_alignment(x, rec, cls, linear, size)
        for linear, _, size, access, _ in mem_ops:
            if access != "no_mem_access":
                faults.check_ac(x, linear, size)

        # --- inputs ------------------------------------------------------------------------
        reg_ops = []
        for op in fp["operands"]:
            loc = None if (x87 and op["kind"] in ("st0", "sti_opcode")) else \
                operand_loc(op["kind"], op.get("size", 0), d)
            if loc is not None:
                reg_ops.append((loc, op["access"]))
                if op["access"] in READS:
                    p.read(("reg",) + loc, _read(x, loc))
            if op["kind"] in ("kp1_reg",):
                for k in (d.reg & ~1, d.reg | 1):
                    reg_ops.append(((f"k{k}", 0, 64), op["access"]))
            if op["kind"].endswith("p3_vvvv"):
                w = 512 if op["kind"].startswith("zmm") else 128
                for k in range(d.vvvv & ~3, (d.vvvv & ~3) + 4):
                    p.read(("reg", f"zmm{k}", 0, w), _read(x, (f"zmm{k}", 0, w)))
        for r in fp["implicit"]:
            if r["reg"] in ("es", "cs", "ss", "ds", "fs", "gs") or r["reg"].startswith("st"):
                continue
            loc = reg_loc(r["reg"])
            reg_ops.append((loc, r["access"]))
            if r["access"] in READS:
                p.read(("reg",) + loc, _read(x, loc))
        for k, (linear, off, size, access, seg) in enumerate(mem_ops):
            if access in READS:
                p.read(("mem", k), x.load(linear, size))
            elif access == "no_mem_access":
                p.read(("offset", k), off)
        read_mask = sum(1 << USER_FLAG_BITS[f] for f in flags["read"] if f in USER_FLAG_BITS)
        if rec["string"] and d.rep:
            read_mask |= (1 << st.ZF) if mn.startswith(("CMPS", "SCAS")) else 0
            p.read(("reg", "ecx", 0, 32), x.read("ecx"))
        if read_mask:
            p.read(("flags",), x.read("flags") & read_mask)
        if x87 or mmx:
            for f in X87_STATE:
                p.read(("x87", f), x.read(f))
        if simd:
            p.read(("mxcsr",), x.read("mxcsr"))
        if d.aaa:
            p.read(("reg", f"k{d.aaa}", 0, 64), x.read(f"k{d.aaa}"))
        if flow in BRANCH_FLOWS or (rec["string"] and d.rep):
            p.read(("eip",), x.read("eip"))
            p.read(("len",), z3.BitVecVal(d.length, 8))
        if d.imm:
            p.read(("imm",), z3.BitVecVal(int.from_bytes(d.imm, "little"), 8 * len(d.imm)))
        p.read(("static",), z3.BitVecVal(d.static_bits, 8))
        inputs = [t for _, t in p.reads]
        name = code + (".rep" if (rec["string"] and d.rep) else "")
        faults.data_faults(x, rec, cls, name, inputs)

        # --- outputs -----------------------------------------------------------------------
        cond_all = bool(d.aaa) or (rec["string"] and d.rep is not None)

        def value(dest: str, width: int, old=None, extra=()):
            ins = inputs + ([old] if old is not None else []) + list(extra)
            return _uf(f"{name}.{dest}", ins, width)

        done = set()
        for loc, access in reg_ops:
            if access not in WRITES or loc in done:
                continue
            done.add(loc)
            old = _read(x, loc) if (access in CONDITIONAL or cond_all) else None
            v = value(f"{loc[0]}.{loc[1]}.{loc[2]}", loc[2], old)
            if loc[0].startswith("fpr"):
                # An MMX write sets the register's exponent bits to ones (SDM Vol. 1 9.5.1).
                _write(x, (loc[0], 0, 80), z3.Concat(z3.BitVecVal(0xFFFF, 16), v))
            else:
                _write(x, loc, v, widen and loc[0].startswith("zmm"))
        for k, (linear, off, size, access, seg) in enumerate(mem_ops):
            if access in WRITES:
                old = x.load(linear, size) if (access in CONDITIONAL or cond_all) else None
                x.store(linear, size, value(f"mem{k}", 8 * size, old))
        if x87 or mmx:
            # MMX instructions set TOP = 0 and every tag valid (SDM Vol. 1 9.5.1); x87 ones
            # may change the stack, tags and registers (over-approximated).
            outs = ("fsw", "ftw") + (("fcw",) + st.FPRS if x87 else ())
            for f in outs:
                _write(x, (f, 0, st.FIELD[f].width), value(f, st.FIELD[f].width))
            if pointers:
                # The last-instruction pointers: CS:EIP of this instruction and the segment and
                # offset of its memory operand (SDM Vol. 1 8.1.8).  A processor that deprecates
                # FCS/FDS (CPUID.(EAX=07H,ECX=0):EBX[13], "zero_fcs_fds") stores 0 there.
                where = [x.read("eip")] + [off for _, off, _, _, _ in mem_ops]
                for f in ("fop", "fip", "fdp"):
                    _write(x, (f, 0, st.FIELD[f].width), value(f, st.FIELD[f].width, extra=where))
                sels = [x.read(seg) for _, _, _, _, seg in mem_ops]
                zero = x.has("zero_fcs_fds")
                if z3.is_true(zero) and mn not in ("FLDENV", "FRSTOR"):
                    x.write("fcs", 0)
                    x.write("fds", 0)
                else:
                    x.write("fcs", value("fcs", 16, extra=where + [x.read("cs")]))
                    x.write("fds", value("fds", 16, extra=where + sels))
        if simd:
            _write(x, ("mxcsr", 0, 32), value("mxcsr", 32) & 0xFFFF)
        wmask = sum(1 << USER_FLAG_BITS[f] for f in flags["written"] + flags["undefined"]
                    if f in USER_FLAG_BITS)
        clear = sum(1 << USER_FLAG_BITS[f] for f in flags["cleared"] if f in USER_FLAG_BITS)
        setm = sum(1 << USER_FLAG_BITS[f] for f in flags["set"] if f in USER_FLAG_BITS)
        if wmask or clear or setm:
            old = x.read("flags") if cond_all else None
            new = x.read("flags") & ~(wmask | clear | setm)
            if wmask:
                new = new | (value("flags", 32, old) & wmask)
            x.write("flags", new | setm)
        if d.aaa and opmask_access in WRITES:
            # gathers and scatters clear the mask as their elements complete
            _write(x, (f"k{d.aaa}", 0, 64), value(f"k{d.aaa}", 64))
        if rec["string"] and d.rep is not None:
            x.write("ecx", value("ecx", 32))
            x.jump(value("eip", 32))
        elif flow in BRANCH_FLOWS:
            x.jump(value("eip", 32))

    return body


def _name_num(name: str) -> int:
    if name in st.GPRS:
        return st.GPRS.index(name)
    return GPR16.index(name)


@lru_cache(maxsize=None)
def build(code: str) -> Form:
    """The derived form of iced code ``code`` (built on first use)."""
    rec = table.record(code)
    if not rec["decision"]["derive"]:
        raise KeyError(f"{code} is not derived: {rec['decision']['reason']}")
    layout, enc = rec["layout"], rec["encoding"]

    def decoder(raw: bytes):
        r = decode(layout, enc, raw)
        if isinstance(r, str):
            raise EncodingError(r)
        return r

    raw = bytes.fromhex(rec["bytes"])
    decoder(raw)
    return Form(name=form_name(code), enc=None, enc_text=rec["op_code"], bytes=raw, asm=rec["asm"],
                cite=f"SDM Vol. 2 {rec['mnemonic']}; footprint from iced-x86 {code}",
                theme=f"derived.{enc}", semantics=semantics(rec), decoder=decoder, code=code)


def form_name(code: str) -> str:
    return code.lower()


# The record fields ``semantics`` reads (besides the mnemonic, the CPUID features and the
# instance, which ``shape`` adds by what they decide).
USED = ("footprint", "flow", "lock", "string", "fpu_no_wait", "bcst_size")


def shape(code: str, features: frozenset[str]) -> str:
    """What the semantics of ``code``'s canonical instance are built from, without its names:
    codes of one shape give alpha-equivalent outcomes (the same terms up to the names of their
    uninterpreted functions), so their classifications are one.  ``features`` (the profile's
    processor) decide which CPUID checks exist; the mnemonic enters through what ``semantics``
    asks of it."""
    rec = table.record(code)
    missing = [f for f in rec["cpuid"] if f not in features]
    base = _shape(code)
    zero = "zero_fcs_fds" in features and "x87" in faults.classes(rec)
    if not missing and not zero:
        return base
    import hashlib
    return hashlib.sha256(f"{base}/{sorted(missing)}/{zero}".encode()).hexdigest()[:32]


@lru_cache(maxsize=None)
def _shape(code: str) -> str:
    import hashlib
    import json

    rec = table.record(code)
    mn = rec["mnemonic"]
    inst = decode(rec["layout"], rec["encoding"], bytes.fromhex(rec["bytes"]))
    doc = {k: rec.get(k) for k in USED}
    doc.update(
        instance=inst.__dict__, classes=sorted(faults.classes(rec)),
        widen=rec["encoding"] in ("vex", "evex", "xop"),
        mnemonic_rules=[mn in ("DIV", "IDIV", "AAM"), mn == "BOUND", mn in faults.X87_CONTROL,
                        mn in faults.SSE_UNALIGNED, mn in faults.AVX_ALIGNED,
                        mn in ("LDMXCSR", "STMXCSR", "VLDMXCSR", "VSTMXCSR", "VZEROALL",
                               "VZEROUPPER", "EMMS", "FEMMS", "WAIT"),
                        mn.startswith(("CMPS", "SCAS"))])
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]
