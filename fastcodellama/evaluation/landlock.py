"""Landlock (Linux >= 5.13): the file system access a check keeps, whatever its mounts and uid allow.

`restrict()` leaves the calling process (and all it starts) only the access its rules grant beneath
their paths: everything else on the file system is refused, as are TCP bind/connect (ABI 4) and
signals or abstract unix sockets across the sandbox's boundary (ABI 6). Each ABI version adds
rights; a right the kernel does not know is neither handled nor granted, so older kernels restrict
less, never fail. Needs no_new_privs (or CAP_SYS_ADMIN) first.

Standard library only: the sandbox's setup program imports this.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2  # ABI 6

READ_EXECUTE = EXECUTE | READ_FILE | READ_DIR
READ = READ_FILE | READ_DIR
# A scratch directory: files and directories, but no device nodes or sockets, and nothing executed.
WRITE_TREE = (READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO | REFER
              | TRUNCATE)
DEVICE = READ_FILE | WRITE_FILE | IOCTL_DEV
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a rule on a non-directory may grant
# libc's syscall(), looked up once: each CDLL makes a class of its own, and a check makes dozens of calls.
_syscall_fn = ctypes.CDLL(None, use_errno=True).syscall


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (or it is disabled at boot)."""
    version = _syscall_fn(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                          ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, version)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    rights |= REFER if abi >= 2 else 0
    rights |= TRUNCATE if abi >= 3 else 0
    rights |= IOCTL_DEV if abi >= 5 else 0
    return rights


def _syscall(number: int, *args: object) -> int:
    result = _syscall_fn(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"landlock syscall {number}: {errno.errorcode.get(code, code)}")
    return result


def restrict(rules: list[tuple[str, int]], abi: int) -> None:
    """Restricts this process to `rules`: (path, rights granted beneath it); missing paths are skipped."""
    handled = _handled_fs(abi)
    attr = struct.pack("<QQQ", handled, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                       _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _syscall(_SYS_CREATE_RULESET, buffer, ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path, rights in rules:
            _add_rule(ruleset, path, rights & handled)
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _add_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        beneath = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd), 12)
        _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), beneath, ctypes.c_uint32(0))
    finally:
        os.close(fd)
