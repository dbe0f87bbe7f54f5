"""A seccomp filter, assembled by hand as classic BPF, against the system calls no check needs.

`check_rules()` is the sandbox's policy: no io_uring, perf_event_open, ptrace or cross-process
memory access, no mounting or namespace changes (the private root stays as built), no kernel
keyrings, bpf or userfaultfd, no sockets but IPv4/IPv6 ones (so no connect() to a unix socket
file, nor vsock or netlink), and no datagram socketpair (which could connect() to a socket file).
Denied calls fail with EPERM; clone3 fails with ENOSYS, which makes the C library fall back to
clone, whose flags the filter can read (clone3 passes them in memory, out of the filter's sight).

A call of a foreign ABI (i386 or x32 on x86_64) kills the process: its numbers mean other calls.
Only x86_64 and aarch64 are known; elsewhere `supported()` is false and nothing is installed.

Standard library only: the sandbox's setup program imports this.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000

# name: (x86_64, aarch64); the newer calls share one number across architectures.
SYSCALLS = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "perf_event_open": (298, 241), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "open_tree_attr": (467, 467), "unshare": (272, 97), "setns": (308, 268), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280), "userfaultfd": (323, 282),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "pidfd_getfd": (438, 438),
    "fanotify_init": (300, 262), "syslog": (103, 116), "modify_ldt": (154, None),
    "clone": (56, 220), "clone3": (435, 435), "socket": (41, 198), "socketpair": (53, 199),
}

CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
AF_UNIX, AF_INET, AF_INET6, SOCK_DGRAM = 1, 2, 10, 2

_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ, _JGE, _JSET, _AND, _RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
_NR, _ARCH = 0, 4


def _arg(index: int) -> int:
    """Offset of the low 32 bits of a call's argument in struct seccomp_data (little-endian)."""
    return 16 + 8 * index


class Rule:
    """Deny `syscall` with `errno_`, only where all of `when` hold and none of `unless` does.

    `when`: (argument index, mask, value): with mask 0 the argument equals value; with value 0,
    (argument & mask) != 0; with both, (argument & mask) == value. `unless`: (argument index, value)
    pairs, each an argument value that is allowed.

    A plain class, not a dataclass: the setup program of every check imports this module, and
    importing dataclasses would cost each check more than the rest of the module."""

    __slots__ = ("syscall", "errno_", "when", "unless")

    def __init__(self, syscall: str, errno_: int = errno.EPERM, when: tuple[tuple[int, int, int], ...] = (),
                 unless: tuple[tuple[int, int], ...] = ()) -> None:
        self.syscall, self.errno_, self.when, self.unless = syscall, errno_, when, unless


def check_rules() -> list[Rule]:
    plain = ["ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "io_uring_setup",
             "io_uring_enter", "io_uring_register", "mount", "umount2", "pivot_root", "chroot", "open_tree",
             "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_tree_attr",
             "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "userfaultfd", "name_to_handle_at",
             "open_by_handle_at", "pidfd_getfd", "fanotify_init", "syslog", "modify_ldt"]
    return [Rule(name) for name in plain] + [
        Rule("clone3", errno.ENOSYS),
        Rule("clone", when=((0, CLONE_NAMESPACES, 0),)),
        Rule("socket", unless=((0, AF_INET), (0, AF_INET6))),
        Rule("socketpair", when=((0, 0, AF_UNIX), (1, 0xF, SOCK_DGRAM))),
    ]


def machine() -> str:
    return os.uname().machine


def supported() -> bool:
    return machine() in _AUDIT_ARCH


class _Assembler:
    """Classic BPF with forward jumps to named labels (resolved at the end)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def bytes(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            jt, jf = (self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
            if not (0 <= jt < 256 and 0 <= jf < 256):
                raise ValueError("seccomp filter too long for a jump")
            out.append(struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF))
        return b"".join(out)


def compile_rules(rules: list[Rule], arch: str | None = None) -> bytes:
    """The BPF program of `rules` for `arch` (default: this machine): deny what they say, allow the rest."""
    arch = arch or machine()
    column = 0 if arch == "x86_64" else 1
    asm = _Assembler()
    asm.op(_LD_W_ABS, _ARCH)
    asm.op(_JEQ, _AUDIT_ARCH[arch], 0, "kill")
    asm.op(_LD_W_ABS, _NR)
    if arch == "x86_64":
        asm.op(_JGE, _X32_BIT, "kill", 0)
    blocks = []
    for i, rule in enumerate(rules):
        number = SYSCALLS[rule.syscall][column]
        if number is None:
            continue
        if rule.when or rule.unless:
            asm.op(_JEQ, number, f"rule{i}", 0)
            blocks.append((i, rule))
        else:
            asm.op(_JEQ, number, f"errno{rule.errno_}", 0)
    asm.op(_RET, _RET_ALLOW)
    for i, rule in blocks:  # each block reads arguments and ends in a return
        asm.label(f"rule{i}")
        for index, value in rule.unless:
            asm.op(_LD_W_ABS, _arg(index))
            asm.op(_JEQ, value, "allow", 0)
        for index, mask, value in rule.when:
            asm.op(_LD_W_ABS, _arg(index))
            if mask and value:
                asm.op(_AND, mask)
                asm.op(_JEQ, value, 0, "allow")
            elif mask:
                asm.op(_JSET, mask, 0, "allow")
            else:
                asm.op(_JEQ, value, 0, "allow")
        asm.op(_RET, _RET_ERRNO | rule.errno_)
    asm.label("allow")
    asm.op(_RET, _RET_ALLOW)
    for code in sorted({rule.errno_ for rule in rules}):
        asm.label(f"errno{code}")
        asm.op(_RET, _RET_ERRNO | code)
    asm.label("kill")
    asm.op(_RET, _RET_KILL_PROCESS)
    return asm.bytes()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_prctl_fn = ctypes.CDLL(None, use_errno=True).prctl  # looked up once (a CDLL makes a class of its own)


def set_no_new_privs() -> None:
    """From here on, execve() grants nothing: setuid bits and file capabilities are ignored."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def install(program: bytes) -> None:
    """Applies the filter to this thread and every process it starts (needs no_new_privs first)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def _prctl(option: int, *args: int) -> None:
    values = [ctypes.c_ulong(a) for a in args] + [ctypes.c_ulong(0)] * (4 - len(args))
    if _prctl_fn(ctypes.c_int(option), *values) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {errno.errorcode.get(code, code)}")
