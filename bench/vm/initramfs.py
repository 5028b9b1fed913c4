#!/usr/bin/env python3
"""initramfs.py - writes a gzip'ed newc cpio archive for a qemu-system guest
from files of a Debian sysroot (scripts/sysroot) and of the project's build,
with the shared libraries every program needs (DT_NEEDED, transitively,
resolved in the sysroot as the guest's dynamic linker would).

  initramfs.py OUT SYSROOT READELF ENTRY...
    ENTRY  DEST=SRC   a file (mode from SRC), e.g. /init=bench/vm/init
           DEST/      an empty directory
           DEST->TGT  a symbolic link

Programs (ELF files among the entries) get their libraries copied to the
path the guest loader finds them at (/lib/<triplet>/ or /lib/). Only the
standard library: bench/run agent-footprint calls it (docs/bench.md)."""
import gzip
import os
import stat
import subprocess
import sys

LIBDIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")


def needed(readelf, path):
    out = subprocess.run([readelf, "-d", path], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        if "(NEEDED)" in line and "[" in line:
            libs.append(line.split("[", 1)[1].split("]", 1)[0])
    return libs


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def resolve(sysroot, soname):
    for d in LIBDIRS:
        p = os.path.join(sysroot, d, soname)
        if os.path.exists(p):
            return "/" + d + "/" + soname, os.path.realpath(p)
    raise SystemExit("initramfs.py: %s not found in %s" % (soname, sysroot))


class Cpio:
    def __init__(self, f):
        self.f, self.ino, self.seen = f, 1, set()

    def _hdr(self, name, mode, size, nlink=1):
        self.ino += 1
        fields = [self.ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
        h = "070701" + "".join("%08X" % v for v in fields)
        self.f.write(h.encode() + name.encode() + b"\0")
        self.f.write(b"\0" * ((4 - (110 + len(name) + 1) % 4) % 4))

    def _data(self, data):
        self.f.write(data)
        self.f.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dirs(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.mkdir("/".join(parts[:i]))

    def mkdir(self, name):
        name = name.strip("/")
        if name and name not in self.seen:
            self.seen.add(name)
            self._hdr(name, stat.S_IFDIR | 0o755, 0, 2)

    def file(self, dest, src):
        name = dest.strip("/")
        if name in self.seen:
            return
        self.dirs(dest)
        self.seen.add(name)
        with open(src, "rb") as f:
            data = f.read()
        mode = os.stat(src).st_mode & 0o777
        self._hdr(name, stat.S_IFREG | mode, len(data))
        self._data(data)

    def link(self, dest, target):
        name = dest.strip("/")
        if name in self.seen:
            return
        self.dirs(dest)
        self.seen.add(name)
        t = target.encode()
        self._hdr(name, stat.S_IFLNK | 0o777, len(t))
        self._data(t)

    def end(self):
        self._hdr("TRAILER!!!", 0, 0)


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    out, sysroot, readelf = sys.argv[1:4]
    with gzip.open(out, "wb", compresslevel=1) as f:
        c = Cpio(f)
        pending = []
        for e in sys.argv[4:]:
            if "->" in e:
                d, t = e.split("->", 1)
                c.link(d, t)
            elif e.endswith("/") and "=" not in e:
                c.mkdir(e)
            else:
                d, s = e.split("=", 1)
                c.file(d, s)
                if is_elf(s):
                    pending.append(s)
        done = set()
        while pending:
            for so in needed(readelf, pending.pop()):
                if so in done:
                    continue
                done.add(so)
                dest, src = resolve(sysroot, so)
                c.file(dest, src)
                pending.append(src)
        c.end()


if __name__ == "__main__":
    main()
