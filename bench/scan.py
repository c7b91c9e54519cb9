"""Benchmark: scanning real guests against ``objdump -d``, and check-patch of grub-invaders.

For tboot and the largest other guest installed (by executable bytes), in one run:

* scan: ``paravirt.scan_guest`` on the loaded guest, best of N, with a WARM classification
  cache (a temporary cache directory, filled by one cold scan first, whose time is printed too);
  instructions/s; the same with loading (ELF parsing, gunzip) included;
* the first scan in a fresh process (loaded guest, warm cache on disk, nothing remembered in
  memory yet: the matcher's shapes, the derived forms, the parsed cache file), best of 3;
* ``objdump -d`` on the same file (decompressed to a temporary file for .gz), best of N;
* the ratios scan / objdump (target: <= 0.5).

Then ``pgvirt check-patch`` of a freshly patched grub-invaders, as a fresh process (imports
included, warm cache), best of 3 (target: under 5 s), and in process.
Needs the Debian guests (tests/setup-guests.sh) and binutils.
"""

from __future__ import annotations

import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TBOOT, TBOOT_SYMS = Path("/boot/tboot.gz"), Path("/boot/tboot-syms")
INVADERS = Path("/boot/invaders.exec")
CANDIDATES = ([INVADERS, TBOOT] + sorted(Path("/usr/lib/grub/i386-pc").glob("*.mod"))
              + sorted(Path("/usr/lib/syslinux/modules/bios").glob("*.c32")))
N = 15


def times(fn, n: int = N) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def best(fn, n: int = N) -> float:
    return min(times(fn, n))


def largest_other() -> Path | None:
    from pgvirt.guest.image import GuestError, load_guest

    size = {}
    for p in CANDIDATES:
        if p == TBOOT or not p.is_file():
            continue
        try:
            size[p] = sum(len(s.data) for s in load_guest(p).sections)
        except GuestError:
            continue
    return max(size, key=size.get) if size else None


_FIRST = """
import sys, time
from pgvirt.guest import paravirt
from pgvirt.guest.image import load_guest
g = load_guest(sys.argv[1])
t = time.perf_counter()
paravirt.scan_guest(g, "pentium")
print(time.perf_counter() - t)
"""


def first_scan(path: Path) -> float:
    out = float("inf")
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", _FIRST, str(path)], capture_output=True, text=True,
                           check=True)
        out = min(out, float(r.stdout))
    return out


def bench_scan(path: Path, tmp: Path, objdump: str) -> None:
    from pgvirt.guest import paravirt
    from pgvirt.guest.image import load_guest

    g = load_guest(path)
    t = time.perf_counter()
    rep = paravirt.scan_guest(g, "pentium")          # fills the (temporary) cache
    cold = time.perf_counter() - t
    assert rep.derived or not rep.result.forms, "the cache was expected cold"
    warm = paravirt.scan_guest(g, "pentium")
    assert not warm.derived, "the cache did not answer"
    scans = times(lambda: paravirt.scan_guest(g, "pentium"))
    scan = min(scans)
    load = best(lambda: load_guest(path), 3)
    first = first_scan(path)
    elf = path
    if path.suffix == ".gz":
        elf = tmp / path.stem
        elf.write_bytes(gzip.decompress(path.read_bytes()))
    ods = times(lambda: subprocess.run([objdump, "-d", str(elf)], stdout=subprocess.DEVNULL, check=True))
    od = min(ods)
    med = statistics.median(scans) / statistics.median(ods)
    n = rep.result.instructions
    print(f"{path.name:18} {n:8d} {len(rep.sites):6d} {cold:8.2f} {scan * 1e3:8.1f} "
          f"{n / scan / 1e6:8.2f} {first * 1e3:8.1f} {(scan + load) * 1e3:10.1f} {od * 1e3:9.1f} "
          f"{scan / od:7.2f} {med:7.2f} {first / od:7.2f} {(scan + load) / od:9.2f}")


def bench_check_patch(tmp: Path) -> None:
    from pgvirt.guest import paravirt

    out, man = tmp / "invaders.patched", tmp / "invaders.manifest.json"
    res = paravirt.patch_guest(INVADERS, out, man)
    cmd = [sys.executable, "-m", "pgvirt", "check-patch", str(out), "--manifest", str(man),
           "--format", "json"]
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    assert rc == 0, f"check-patch of grub-invaders exited {rc}"
    cli = best(lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL), 3)
    inproc = best(lambda: paravirt.check_patch(out, man), 3)
    print(f"\ncheck-patch grub-invaders ({len(res.patched)} site(s)): {cli:.2f} s as a fresh process "
          f"(imports included, warm cache), {inproc:.2f} s in process  [target < 5 s]")


def main() -> int:
    objdump = shutil.which("objdump")
    missing = [str(p) for p in (TBOOT, INVADERS) if not p.is_file()]
    if objdump is None or missing:
        print(f"bench/scan.py: needs objdump and {', '.join(missing) or 'the guests'} "
              "(run tests/setup-guests.sh)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pgvirt-bench-") as d:
        tmp = Path(d)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")   # a cache this run fills, then reads
        print(f"scan (warm classification cache; best of {N}) vs objdump -d (best of {N}), "
              f"{os.cpu_count()} CPU(s)")
        print(f"{'guest':18} {'insns':>8} {'sites':>6} {'cold s':>8} {'scan ms':>8} {'Minsn/s':>8} "
              f"{'1st ms':>8} {'+load ms':>10} {'objdump':>9} {'scan/od':>7} {'median':>7} {'1st/od':>7} "
              f"{'+load/od':>9}")
        bench_scan(TBOOT, tmp, objdump)
        other = largest_other()
        if other is not None:
            bench_scan(other, tmp, objdump)
        bench_check_patch(tmp)
    print("\ncold s: first scan, classifying the guest's forms with Z3 (2+ processes); scan ms: "
          "scan_guest on the loaded guest (target: scan/od <= 0.5; median: the same ratio of "
          "medians); 1st ms: the first scan_guest of a fresh process; +load: with ELF parsing and "
          "gunzip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
