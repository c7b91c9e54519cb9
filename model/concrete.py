"""A form's symbolic Outcome compiled once into a Python function over plain integers.

``Form.execute`` builds Z3 terms for every concrete state and asks Z3 to evaluate them (a few
states per second).  Cross-checks against an emulator need thousands per second, so this module
takes the Outcome of ``form.run(state.fresh())`` - the one definition, run once symbolically - and
walks its Z3 DAG once, emitting straight-line Python: one local per distinct AST node (shared by
Z3's AST id, so common subexpressions are computed once), in dependency order.  Nothing here
describes an instruction; every value is the term the form built, evaluated.

Values: a bit-vector is a non-negative ``int`` below 2**width, a Boolean a ``bool``.  An array
(``mem``, ``io``) is the state's ``{address: byte}`` dict (missing cells read 0, as in
``state.concrete``), and a ``Store`` makes a link ``(parent, address, byte)``: a ``Select`` walks
the links back to the dict.  Operators: bvadd/sub/mul/and/or/xor/not/neg/shl/lshr/ashr, unsigned
and signed comparisons, extract, concat, zero/sign extension, if-then-else (of any sort), =,
distinct, and/or/not/implies/xor, select/store and constant arrays.  Any other operator raises
``CompileError`` - there is no fallback to an approximation.

Uninterpreted functions (CPUID's result, ``isa.system._CPUID``) have no value in the model: they
stand for a fixed property of the processor.  A compiled form takes an ``uf`` callable
``uf(name, *args) -> int``; the default returns 0, which is what ``Form.execute`` gets from Z3's
model completion (an empty model interprets every uninterpreted function as the constant 0).  A
cross-check against a real processor passes the processor's own answers instead.

``compiled(form, features)`` is cached per (form, features, instruction bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Mapping

import z3

from . import state as st
from .form import Form
from .outcome import Exit, Fault, Next


class CompileError(Exception):
    """The Outcome uses a Z3 operator this compiler does not translate (add it here)."""


class _Const:
    """A constant array ``K(sort, v)``: every cell reads ``v``."""

    __slots__ = ("v",)

    def __init__(self, v: int):
        self.v = v

    def get(self, _a: int, _d: int = 0) -> int:
        return self.v


def _sel(a, i: int) -> int:
    while type(a) is tuple:
        if a[1] == i:
            return a[2]
        a = a[0]
    return a.get(i, 0)


def _default_uf(name: str, *args: int) -> int:
    return 0


_BIN = {
    z3.Z3_OP_BAND: "&", z3.Z3_OP_BOR: "|", z3.Z3_OP_BXOR: "^",
}
_CMP_U = {z3.Z3_OP_ULEQ: "<=", z3.Z3_OP_ULT: "<", z3.Z3_OP_UGEQ: ">=", z3.Z3_OP_UGT: ">"}
_CMP_S = {z3.Z3_OP_SLEQ: "<=", z3.Z3_OP_SLT: "<", z3.Z3_OP_SGEQ: ">=", z3.Z3_OP_SGT: ">"}


class _Emitter:
    def __init__(self, scalars: Mapping[str, str]):
        self.lines: list[str] = []
        self.names: dict[int, str] = {}
        self.scalars = scalars           # constant name -> python expression
        self.ufs: set[str] = set()
        # Names are keyed by Z3 AST id, and Z3 reuses the id of a freed AST: every root stays
        # referenced here, so a term built afresh later (a property's And) never inherits the
        # name of a dead one (found by Outcome.in_segments, compiled after Outcome.assumed).
        self._alive: list = []

    def name(self, e) -> str:
        return self.names[e.get_id()]

    def compile(self, root) -> str:
        """Emit code for ``root`` and everything below it (iteratively, post-order)."""
        self._alive.append(root)
        stack = [(root, False)]
        while stack:
            e, ready = stack.pop()
            i = e.get_id()
            if i in self.names:
                continue
            if not ready:
                stack.append((e, True))
                if z3.is_app(e):
                    for c in e.children():
                        if c.get_id() not in self.names:
                            stack.append((c, False))
                continue
            self._emit(e)
        return self.names[root.get_id()]

    def _bind(self, e, expr: str) -> None:
        n = f"t{len(self.names)}"
        self.lines.append(f"    {n} = {expr}")
        self.names[e.get_id()] = n

    def _emit(self, e) -> None:
        if not z3.is_app(e):
            raise CompileError(f"cannot compile non-application term {e}")
        if z3.is_bv_value(e):
            self.names[e.get_id()] = str(e.as_long())
            return
        if z3.is_true(e):
            self.names[e.get_id()] = "True"
            return
        if z3.is_false(e):
            self.names[e.get_id()] = "False"
            return
        d = e.decl()
        k = d.kind()
        args = [self.name(c) for c in e.children()]
        if k == z3.Z3_OP_UNINTERPRETED:
            if e.num_args() == 0:
                nm = d.name()
                if nm not in self.scalars:
                    raise CompileError(f"free constant {nm} is not a state field")
                self._bind(e, self.scalars[nm])
                return
            self.ufs.add(d.name())
            w = e.sort().size() if z3.is_bv(e) else None
            if w is None:
                raise CompileError(f"uninterpreted function {d.name()} of non-bit-vector sort")
            self._bind(e, f"UF({d.name()!r}, {', '.join(args)}) & {(1 << w) - 1}")
            return
        if k == z3.Z3_OP_ITE:                       # alike for every sort
            self._bind(e, f"{args[1]} if {args[0]} else {args[2]}")
            return
        if z3.is_bv(e):
            w = e.size()
            m = (1 << w) - 1
            if k == z3.Z3_OP_BADD:
                self._bind(e, f"({' + '.join(args)}) & {m}")
            elif k == z3.Z3_OP_BSUB:
                self._bind(e, f"({args[0]} - {' - '.join(args[1:])}) & {m}")
            elif k == z3.Z3_OP_BMUL:
                self._bind(e, f"({' * '.join(args)}) & {m}")
            elif k in _BIN:
                self._bind(e, f" {_BIN[k]} ".join(args))
            elif k == z3.Z3_OP_BNOT:
                self._bind(e, f"{args[0]} ^ {m}")
            elif k == z3.Z3_OP_BNEG:
                self._bind(e, f"-{args[0]} & {m}")
            elif k == z3.Z3_OP_BSHL:
                self._bind(e, f"(({args[0]} << {args[1]}) & {m}) if {args[1]} < {w} else 0")
            elif k == z3.Z3_OP_BLSHR:
                self._bind(e, f"({args[0]} >> {args[1]}) if {args[1]} < {w} else 0")
            elif k == z3.Z3_OP_BASHR:
                a, b = args
                self._bind(e, f"(({a} - {1 << w} if {a} >> {w - 1} else {a}) >> min({b}, {w - 1})) & {m}")
            elif k == z3.Z3_OP_EXTRACT:
                hi, lo = e.params()
                self._bind(e, f"({args[0]} >> {lo}) & {(1 << (hi - lo + 1)) - 1}")
            elif k == z3.Z3_OP_CONCAT:
                parts = []
                shift = 0
                for c, a in reversed(list(zip(e.children(), args))):
                    parts.append(f"({a} << {shift})" if shift else a)
                    shift += c.size()
                self._bind(e, " | ".join(reversed(parts)))
            elif k == z3.Z3_OP_ZERO_EXT:
                self._bind(e, args[0])
            elif k == z3.Z3_OP_SIGN_EXT:
                cw = e.children()[0].size()
                ext = ((1 << (w - cw)) - 1) << cw
                self._bind(e, f"({args[0]} | {ext}) if {args[0]} >> {cw - 1} else {args[0]}")
            elif k == z3.Z3_OP_SELECT:
                self._bind(e, f"SEL({args[0]}, {args[1]})")
            else:
                raise CompileError(f"bit-vector operator {d.name()} is not compiled")
            return
        if z3.is_bool(e):
            if k == z3.Z3_OP_AND:
                self._bind(e, "(" + " and ".join(args) + ")" if args else "True")
            elif k == z3.Z3_OP_OR:
                self._bind(e, "(" + " or ".join(args) + ")" if args else "False")
            elif k == z3.Z3_OP_NOT:
                self._bind(e, f"not {args[0]}")
            elif k == z3.Z3_OP_IMPLIES:
                self._bind(e, f"(not {args[0]}) or {args[1]}")
            elif k == z3.Z3_OP_XOR:
                self._bind(e, f"{args[0]} != {args[1]}")
            elif k == z3.Z3_OP_EQ:
                if z3.is_array(e.children()[0]):
                    raise CompileError("equality of arrays is not compiled")
                self._bind(e, f"{args[0]} == {args[1]}")
            elif k == z3.Z3_OP_DISTINCT:
                if len(args) == 2:
                    self._bind(e, f"{args[0]} != {args[1]}")
                else:
                    self._bind(e, f"len({{{', '.join(args)}}}) == {len(args)}")
            elif k in _CMP_U:
                self._bind(e, f"{args[0]} {_CMP_U[k]} {args[1]}")
            elif k in _CMP_S:
                w = e.children()[0].size()
                sa = [f"({a} - {1 << w} if {a} >> {w - 1} else {a})" for a in args]
                self._bind(e, f"{sa[0]} {_CMP_S[k]} {sa[1]}")
            else:
                raise CompileError(f"Boolean operator {d.name()} is not compiled")
            return
        if z3.is_array(e):
            if k == z3.Z3_OP_STORE:
                self._bind(e, f"({args[0]}, {args[1]}, {args[2]})")
            elif k == z3.Z3_OP_CONST_ARRAY:
                self._bind(e, f"CONST({args[0]})")
            else:
                raise CompileError(f"array operator {d.name()} is not compiled")
            return
        raise CompileError(f"term of sort {e.sort()} is not compiled")


@dataclass(frozen=True)
class CheckInfo:
    vector: int
    reason: str
    has_code: bool
    exit: Exit | None = None    # a VM exit (its code is the qualification), not a fault


@dataclass
class Run:
    """One concrete evaluation of a compiled form.

    ``fault`` is the first check that fires (or None), ``exit`` that check when it is a VM exit
    (then ``fault`` is None: compiled with ``vm``, SDM Vol. 3C 25.1); ``assumed`` says whether the state lies
    inside the form's stated assumptions; ``post`` holds every scalar field afterwards (as if no
    check fired: a caller reads it only when ``fault`` is None); ``mem``/``io`` are the arrays
    afterwards (read with ``read``); ``loads``/``stores`` the (array, address) pairs accessed.
    """

    fault: Fault | None
    assumed: bool
    post: dict
    mem: Any
    io: Any
    loads: tuple
    stores: tuple
    in_segments: bool = True     # Outcome.in_segments: no access of the run is a memory trap
    in_current_segments: bool = True   # Outcome.in_current_segments
    exit: Exit | None = None

    def read(self, array: str, address: int) -> int:
        return _sel(self.mem if array == "mem" else self.io, address)

    def addresses(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for arr, a in self.loads + self.stores:
            out.setdefault(arr, set()).add(a)
        return out

    def outcome(self, extra: Mapping[str, set] | None = None) -> Fault | Exit | Next:
        """As ``Form.execute``: the Fault or the Exit, or Next with every scalar and the arrays
        at the addresses the form accessed (and ``extra``)."""
        if self.exit is not None:
            return self.exit
        if self.fault is not None:
            return self.fault
        addrs = self.addresses()
        for k, v in (extra or {}).items():
            addrs.setdefault(k, set()).update(v)
        state = dict(self.post)
        state["io"] = {a: _sel(self.io, a) for a in sorted(addrs.get("io", ()))}
        state["mem"] = {a: _sel(self.mem, a) for a in sorted(addrs.get("mem", ()))}
        return Next({f.name: state[f.name] for f in st.FIELDS})


@dataclass
class Compiled:
    """A form compiled for one feature set, one instruction encoding and one VM configuration
    (``vm``: ``vmx.Controls`` / ``svm.Intercepts``, None on bare hardware)."""

    form: Form
    features: frozenset
    code: bytes
    checks: tuple[CheckInfo, ...]
    effects: tuple[str, ...]
    ufs: frozenset
    source: str
    _fn: Callable
    vm: Any = None

    @property
    def may_exit(self) -> bool:
        """Whether the definition builds a VM-exit condition of its own under ``vm`` (an exit
        of the exception bitmap is a fault's, and comes with the fault)."""
        return any(c.exit is not None and c.exit.exit_reason != "exception" for c in self.checks)

    def evaluate(self, values: Mapping, uf: Callable | None = None, complete: bool = True) -> Run:
        """Evaluate on a concrete state (the model's format: ints, ``mem``/``io`` dicts).

        With ``complete`` False, ``Run.post`` holds only the fields the form wrote (a caller
        that has the state before merges them: a monitor emulating thousands of traps)."""
        if len(values) < len(st.FIELDS) and any(n not in values for n in st.SCALARS):
            # missing scalars read 0, as in ``state.concrete``
            values = {**{n: st.FIELD[n].default for n in st.SCALARS}, **values}
        fails, codes, assumed, post, mem, io, loads, stores, segs, current = self._fn(
            values, values.get("mem", {}), values.get("io", {}), uf or _default_uf)
        fault = exit_ = None
        for k, f in enumerate(fails):
            if f:
                c = self.checks[k]
                if c.exit is not None:
                    exit_ = replace(c.exit, qualification=codes[k] if c.has_code else None)
                else:
                    fault = Fault(c.vector, codes[k] if c.has_code else None, c.reason)
                break
        if not complete:
            return Run(fault, assumed, post, mem, io, loads, stores, segs, current, exit_)
        full = {n: values.get(n, st.FIELD[n].default) for n in st.SCALARS}
        full.update(post)
        return Run(fault, assumed, full, mem, io, loads, stores, segs, current, exit_)

    def run(self, values: Mapping, uf: Callable | None = None) -> Fault | Exit | Next:
        """The same answer as ``form.execute(values, code, features, vm)``."""
        return self.evaluate(values, uf).outcome()


def compile_outcome(form: Form, features: frozenset = frozenset(), code: bytes | None = None,
                    vm=None) -> Compiled:
    """Compile ``form`` (run once on a fresh symbolic state, under ``vm`` if given) into a
    Python function."""
    code = form.bytes if code is None else bytes(code)
    s = st.fresh("s")
    extra = {} if vm is None else {"vm": vm}       # an event (``events``) takes no controls
    o = form.run(s, code, frozenset(features), record=True, **extra)
    scalars = {f"s.{n}": f"V[{n!r}]" for n in st.SCALARS}
    scalars["s.mem"] = "MEM"
    scalars["s.io"] = "IO"
    em = _Emitter(scalars)
    fails = [em.compile(c.fails) for c in o.checks]
    codes = [em.compile(c.code) if c.code is not None else "None" for c in o.checks]
    assumed = em.compile(o.assumed)
    post = []
    for n in st.SCALARS:
        term = o.post[n]
        if term.eq(s[n]):
            continue
        post.append((n, em.compile(term)))
    mem = em.compile(o.post.mem)
    io = em.compile(o.post.io)
    loads = [(arr, em.compile(a)) for arr, a in o.loads]
    stores = [(arr, em.compile(a)) for arr, a in o.stores]
    segs = em.compile(o.in_segments)
    current = em.compile(o.in_current_segments)

    def tup(items):
        return "(" + "".join(f"{i}, " for i in items) + ")"

    body = "\n".join(em.lines) or "    pass"
    src = (f"def _f(V, MEM, IO, UF):\n{body}\n"
           f"    return ({tup(fails)}, {tup(codes)}, {assumed}, "
           f"{{{', '.join(f'{n!r}: {v}' for n, v in post)}}}, {mem}, {io}, "
           f"{tup(f'({a!r}, {v})' for a, v in loads)}, {tup(f'({a!r}, {v})' for a, v in stores)}, "
           f"{segs}, {current})\n")
    env = {"SEL": _sel, "CONST": _Const, "min": min, "len": len}
    exec(compile(src, f"<compiled {form.name}>", "exec"), env)
    checks = tuple(CheckInfo(c.vector, c.reason, c.code is not None, c.exit) for c in o.checks)
    return Compiled(form, frozenset(features), code, checks, o.effects, frozenset(em.ufs), src,
                    env["_f"], vm)


@lru_cache(maxsize=None)
def _cached(name: str, features: frozenset, code: bytes, vm=None) -> Compiled:
    from . import isa
    return compile_outcome(isa.get(name), features, code, vm)


def compiled(form: Form | str, features=frozenset(), code: bytes | None = None, vm=None) -> Compiled:
    """The compiled form, built once per (form, features, code, vm) in this process.

    Forms are looked up by name in the registry, so a form replaced there (a test that alters
    the model) needs ``clear_cache()``.
    """
    from . import isa
    f = isa.get(form) if isinstance(form, str) else form
    code = f.bytes if code is None else bytes(code)
    if isa.get(f.name) is not f:      # not the registered form (an altered one): keyed by object
        key = (id(f), frozenset(features), code, vm)
        hit = _OTHERS.get(key)
        if hit is None or hit[0] is not f:
            hit = _OTHERS[key] = (f, compile_outcome(f, frozenset(features), code, vm))
        return hit[1]
    if vm is None:
        return _cached(f.name, frozenset(features), code)
    return _cached(f.name, frozenset(features), code, vm)


_OTHERS: dict = {}


def clear_cache() -> None:
    _cached.cache_clear()
    _OTHERS.clear()


# --- other formulas over one state (profiles.wellformed, deprivileged, ...) ---------------------

def compile_predicate(build: Callable[[st.State], Any]) -> Callable[[Mapping], Any]:
    """Compile ``build(fresh_state)`` (a Boolean or bit-vector term) into ``f(values) -> value``."""
    s = st.fresh("s")
    term = build(s)
    scalars = {f"s.{n}": f"V[{n!r}]" for n in st.SCALARS}
    scalars["s.mem"] = "MEM"
    scalars["s.io"] = "IO"
    em = _Emitter(scalars)
    root = em.compile(term)
    body = "\n".join(em.lines) or "    pass"
    src = f"def _p(V, MEM, IO, UF):\n{body}\n    return {root}\n"
    env = {"SEL": _sel, "CONST": _Const, "min": min, "len": len}
    exec(compile(src, "<compiled predicate>", "exec"), env)
    fn = env["_p"]

    def pred(values: Mapping, uf: Callable | None = None):
        if len(values) < len(st.FIELDS) and any(n not in values for n in st.SCALARS):
            values = {**{n: st.FIELD[n].default for n in st.SCALARS}, **values}
        return fn(values, values.get("mem", {}), values.get("io", {}), uf or _default_uf)

    pred.source = src  # type: ignore[attr-defined]
    return pred
