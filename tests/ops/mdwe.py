"""Run a command the way systemd's `MemoryDenyWriteExecute=yes` would: a seccomp filter
that refuses writable-and-executable memory.

    python tests/ops/mdwe.py COMMAND [ARG...]

systemd (252, src/shared/seccomp-util.c) installs the same rules: `mmap` with both
PROT_WRITE and PROT_EXEC, and `mprotect`/`pkey_mprotect` adding PROT_EXEC, fail with EPERM
(it also refuses `shmat` with SHM_EXEC, which nothing here uses). No systemd runs on the
test machine, so this is how the unit's setting is put to the agent. The filter is
inherited across exec, so COMMAND and everything it starts run under it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# per architecture: the audit arch value and the syscall numbers of mmap, mprotect,
# pkey_mprotect (linux/audit.h, asm/unistd.h)
ARCHES = {"x86_64": (0xC000003E, 9, 10, 329), "aarch64": (0xC00000B7, 222, 226, 288)}
PROT_WRITE, PROT_EXEC = 0x2, 0x4
LD_ABS_W, JEQ_K, JSET_K, AND_K, RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
RET_ALLOW, RET_EPERM = 0x7FFF0000, 0x00050000 | 1
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
ARG2 = 16 + 2 * 8  # offsetof(struct seccomp_data, args[2]), its low 32 bits (little endian)


class SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint))


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter)))


def supported() -> bool:
    """Whether this machine's architecture is in the table."""
    return platform.machine() in ARCHES


def program() -> list[tuple[int, int, int, int]]:
    """The BPF program: (code, jump if true, jump if false, k); jumps count from the next."""
    arch, mmap, mprotect, pkey_mprotect = ARCHES[platform.machine()]
    wx = PROT_WRITE | PROT_EXEC
    return [
        (LD_ABS_W, 0, 0, 4),            # 0  arch
        (JEQ_K, 0, 9, arch),            # 1  another ABI: allow (11)
        (LD_ABS_W, 0, 0, 0),            # 2  syscall number
        (JEQ_K, 0, 3, mmap),            # 3  mmap: 4, else 7
        (LD_ABS_W, 0, 0, ARG2),         # 4  prot
        (AND_K, 0, 0, wx),              # 5
        (JEQ_K, 5, 4, wx),              # 6  write and exec: deny (12), else allow (11)
        (JEQ_K, 1, 0, mprotect),        # 7  mprotect: 9
        (JEQ_K, 0, 2, pkey_mprotect),   # 8  pkey_mprotect: 9, else allow (11)
        (LD_ABS_W, 0, 0, ARG2),         # 9  prot
        (JSET_K, 1, 0, PROT_EXEC),      # 10 exec: deny (12), else allow (11)
        (RET_K, 0, 0, RET_ALLOW),       # 11
        (RET_K, 0, 0, RET_EPERM),       # 12
    ]


def install() -> None:
    """Apply the filter to this process (and what it execs or forks from now on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    insns = program()
    filters = (SockFilter * len(insns))(*(SockFilter(*i) for i in insns))
    prog = SockFprog(len(insns), filters)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    os.execvp(sys.argv[1], sys.argv[1:])
