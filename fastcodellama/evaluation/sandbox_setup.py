"""The sandbox's setup program: confines itself, then runs the harness that runs the check's program.

The evaluator runs `main(KEY=VALUE...)` in a process forked from its waiting `python -I -S`
interpreter (setup_forks.py), or where that cannot be, `python -I -S -c "import sandbox_setup ...;
main()" KEY=VALUE...` (imported from this directory, so that its cached bytecode is used; it also
runs as a script), with the program on stdin, the reply pipe and the request pipe open (see
`Config`). Process tree:

    setup (the evaluator's uid): joins the check's cgroup, unshares namespaces, forks
      └─ init: PID 1 of the new PID namespace; builds the private root, forks, reaps
           └─ runner: limits, identity, no_new_privs, Landlock, seccomp; then the harness
              (harness.py, in this interpreter, as `python -I -S -c <harness.py> /sandbox/program.py`
              would run it: a second interpreter's start was much of a check's cost), which runs the program

The private root holds only what a check needs, read-only, nosuid and nodev: /usr, /etc, the
/bin, /sbin and /lib* links or trees, the interpreter and the libraries it has loaded, a fresh
/proc, /dev with null, zero, full, random and urandom, and empty private /tmp, /dev/shm (small
tmpfs, noexec) and /run. The user's home, other users' files, the host's /tmp, /run and
/var (and every unix socket in them) are not there at all.

Identity: a root evaluator drops to the check's leased uid, with no supplementary groups; a
non-root evaluator runs in a user namespace that maps only its own uid (to itself), and the runner
drops every capability it holds there before exec, so nothing can remount, unlock or unshare its
way out (seccomp refuses those calls too). Landlock then restricts file access to exactly the
paths above, TCP, and signals and abstract sockets across the sandbox's boundary.

Everything before the harness is trusted: its messages ("isolation", "refused", "setup-error") come
before the harness's "start"; nothing of the setup's state is secret (the program may read it all). Where a required part is missing (namespaces, the private root, an
unprivileged identity, seccomp), the setup refuses with the reason, unless the evaluator passed
unsafe=1 (the --unsafe-no-sandbox flag), which runs with whatever is left and says so.

Standard library only (plus this package's landlock and seccomp), and as few imports as possible:
every check pays for this program's start-up.
"""
from __future__ import annotations

import ctypes
import errno
import math
import os
import resource
import sys

if __name__ in ("__main__", "sandbox_setup"):
    # Run by the evaluator with -I -S (imported from this directory, or as a script): the two siblings
    # come from this directory, not through the package, whose __init__ may import far more than a
    # check's start-up should pay for.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import landlock
    import seccomp
    del sys.path[0]
else:
    from fastcodellama.evaluation import landlock, seccomp

_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MNT_DETACH, _AT_FDCWD, _AT_RECURSIVE = 2, -100, 0x8000
_ATTR_RDONLY, _ATTR_NOSUID, _ATTR_NODEV, _ATTR_NOEXEC = 1, 2, 4, 8
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_DUMPABLE = 1, 24, 4
_CAP_VERSION_3 = 0x20080522

SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
# What of /etc Landlock lets a check read (the private root has all of it, read-only): the loader's
# cache, names, time zone, certificates; not shadow files, keys or anything else root may own.
ETC_READABLE = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
                "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/resolv.conf",
                "/etc/mime.types", "/etc/ssl/certs", "/etc/ca-certificates")
CHECK_DIR = "/sandbox"  # holds program.py, read-only, in the private root
_STAT_FLAGS = ((1, _MS_RDONLY), (2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC), (1024, 1024), (2048, 2048),
               (4096, 1 << 21))  # statvfs f_flag bit -> mount flag, for the remount fallback


class Config:
    """The evaluator's KEY=VALUE arguments (a plain class: a dataclass import costs every check)."""

    def __init__(self, argv: list[str]) -> None:
        items = [arg.split("=", 1) for arg in argv]
        values = dict(items)
        self.uid = int(values["uid"])  # the leased sandbox uid (used when the evaluator is root)
        self.reply_fd, self.request_fd = int(values["reply_fd"]), int(values["request_fd"])
        self.timeout = float(values["timeout"])
        self.memory_mb, self.file_size_mb = int(values["memory_mb"]), int(values["file_size_mb"])
        self.open_files, self.processes = int(values["open_files"]), int(values["processes"])
        self.tmpfs_mb = int(values["tmpfs_mb"])
        self.unsafe = values["unsafe"] == "1"
        self.workdir = values["workdir"]  # an empty directory of the evaluator's: the new root's mount point
        self.marker = values["marker"]  # in every process's command line, so that tests can find them
        self.cgroup_procs = [value for key, value in items if key == "cgroup"]
        self.cgroup_label = values.get("cgroup_label", "")
        self.harness = harness_code()  # now: the private root will not have harness.py


# What does not change while an interpreter lives, found once in it: a forking interpreter
# (setup_forks.py) finds it before its first fork, and every check's setup inherits it.
_harness: list = []  # harness.py, compiled as `python -c <its text>` would compile it
_mapped_dirs: dict[str, str | None] = {}  # a mapped file's path -> its real directory (None: not a file)
_real: dict[str, str] = {}  # os.path.realpath, of the interpreter's own paths


def harness_code():
    """harness.py compiled as `python -I -S -c <harness.py>` compiles it."""
    if not _harness:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"), encoding="utf-8") as f:
            _harness.append(compile(f.read(), "<string>", "exec"))
    return _harness[0]


def _realpath(path: str) -> str:
    real = _real.get(path)
    if real is None:
        real = _real[path] = os.path.realpath(path)
    return real


def warm() -> None:
    """Finds now what every check's setup needs (see above): for a forking interpreter, once."""
    harness_code()
    _interpreter_trees()
    for name in _LIBC_CALLS:  # ctypes makes each function's object at its first use, then keeps it
        getattr(_libc, name)


class Refused(Exception):
    """A required part of the isolation is missing (the message says which)."""


# --- messages to the evaluator (before the exec only) ------------------------------------------

def _send(fd: int, kind: str, text: str) -> None:
    data = ('["%s","%s"]\n' % (kind, text.encode("utf-8", "backslashreplace").hex())).encode()
    while data:
        data = data[os.write(fd, data):]


# --- system calls --------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_LIBC_CALLS = ("mount", "syscall", "prctl", "unshare", "umount2", "capset")  # what _call calls


def _call(name: str, *args: object) -> int:
    result = getattr(_libc, name)(*args)
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")
    return result


def _enc(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _call("mount", _enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _restrict_mount(path: str, attrs: int, recursive: bool) -> None:
    """Adds mount attributes (read-only, nosuid, ...) to the mount at `path`: mount_setattr where the
    kernel has it (Linux >= 5.12), else a bind remount that keeps the flags it already has (in a user
    namespace those may be locked, and a remount must repeat them)."""
    attr = _MountAttr(attrs, 0, 0, 0)
    try:
        _call("syscall", ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path.encode(),
              ctypes.c_uint(_AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
              ctypes.c_size_t(ctypes.sizeof(attr)))
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    current = os.statvfs(path).f_flag
    flags = sum(mount_flag for stat_flag, mount_flag in _STAT_FLAGS if current & stat_flag)
    wanted = ((_ATTR_RDONLY, _MS_RDONLY), (_ATTR_NOSUID, _MS_NOSUID), (_ATTR_NODEV, _MS_NODEV),
              (_ATTR_NOEXEC, _MS_NOEXEC))
    flags |= sum(mount_flag for attr_bit, mount_flag in wanted if attrs & attr_bit)
    _mount(None, path, None, _MS_REMOUNT | _MS_BIND | flags)


def _prctl(option: int, value: int) -> None:
    _call("prctl", ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


# --- setup: cgroup and namespaces ---------------------------------------------------------------

def die_with_parent() -> None:
    """The parent-death signal: when the evaluator (or the interpreter that forked this setup) dies,
    so does the check."""
    _prctl(_PR_SET_PDEATHSIG, 9)


def _join_cgroup(config: Config) -> str:
    """Moves this process (and so all the check will start) into the check's cgroup; its label, or
    the per-process fallback's where there is none or joining fails."""
    fallback = "rlimits(per process; no cgroup)"
    if not config.cgroup_procs:
        return fallback
    try:
        for path in config.cgroup_procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
    except OSError:
        return fallback
    return f"{config.cgroup_label}+rlimits"


def _unshare() -> list[str]:
    """Enters new namespaces (a user namespace too when not root, mapping only our own ids).
    Returns their names; raises Refused with the kernel's answer where it refuses."""
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    names = ["pid", "net", "ipc", "uts"]
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        flags |= _CLONE_NEWUSER
        names.insert(0, "user")
    wanted = "|".join(f"CLONE_NEW{n.upper()}" for n in ["ns"] + names)
    try:
        try:
            _call("unshare", ctypes.c_int(flags | _CLONE_NEWCGROUP))
            names.append("cgroup")
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: a kernel without cgroup namespaces
                raise
            _call("unshare", ctypes.c_int(flags))
    except OSError as e:
        code = errno.errorcode.get(e.errno, e.errno)
        raise Refused(f"unshare({wanted}) refused: {code} ({os.strerror(e.errno)})") from None
    if uid != 0:
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError as e:
            raise Refused(f"cannot map the user namespace's ids: {e}") from None
    return names


# --- init: the private root -----------------------------------------------------------------------

def _interpreter_trees() -> list[str]:
    """The interpreter's install trees and the directories of every file it has mapped (its shared
    libraries, wherever the build put them)."""
    exe, prefix = _realpath(sys.executable), _realpath(sys.base_prefix)
    trees = [prefix] if exe.startswith(prefix + "/") else [prefix, os.path.dirname(exe)]
    with open("/proc/self/maps") as f:  # each file several times (one line per mapped range)
        paths = {fields[5].strip() for fields in (line.split(maxsplit=5) for line in f)
                 if len(fields) == 6 and fields[5].startswith("/")}
    for path in paths:
        if path not in _mapped_dirs:
            _mapped_dirs[path] = os.path.dirname(os.path.realpath(path)) if os.path.isfile(path) else None
        if _mapped_dirs[path] is not None:
            trees.append(_mapped_dirs[path])
    return trees


def _covered(path: str, trees: list[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in trees)


def _bind_read_only(source: str, target: str) -> None:
    os.makedirs(target, 0o755, exist_ok=True)
    _mount(source, target, None, _MS_BIND | _MS_REC)
    _restrict_mount(target, _ATTR_RDONLY | _ATTR_NOSUID | _ATTR_NODEV, recursive=True)


def _build_root(root: str, config: Config, program: bytes) -> list[str]:
    """The private root under `root` (see the module docstring); returns the read-only trees it
    holds (for Landlock). Raises OSError where the kernel refuses a mount."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=755,size={len(program) // 1024 + 1024}k")
    trees: list[str] = []
    for path in SYSTEM_TREES + ("/etc",):
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind_read_only(path, root + path)
            trees.append(path)
    for path in sorted(set(_interpreter_trees()), key=len):
        if not _covered(path, trees) and os.path.isdir(path):
            _bind_read_only(path, root + path)
            trees.append(path)
    _build_dev(root, config)
    _scratch(root + "/tmp", config.tmpfs_mb)
    os.makedirs(root + "/run", 0o755)
    os.makedirs(root + CHECK_DIR, 0o755)
    with open(root + CHECK_DIR + "/program.py", "wb") as f:
        f.write(program)
    os.makedirs(root + "/proc", 0o755)
    try:
        _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        _restrict_mount(root + "/proc", _ATTR_RDONLY, recursive=False)
    except OSError:
        pass  # e.g. a container whose /proc has masked parts: the check runs without /proc
    _pivot(root)
    _restrict_mount("/", _ATTR_RDONLY | _ATTR_NOSUID | _ATTR_NODEV, recursive=False)
    return trees


def _build_dev(root: str, config: Config) -> None:
    os.makedirs(root + "/dev", 0o755)
    for name in DEVICES:  # bind mounts, not mknod: a user namespace may not create device nodes
        target = f"{root}/dev/{name}"
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
        _mount(f"/dev/{name}", target, None, _MS_BIND)
        _restrict_mount(target, _ATTR_RDONLY | _ATTR_NOSUID | _ATTR_NOEXEC, recursive=False)  # not nodev
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    _scratch(root + "/dev/shm", config.tmpfs_mb)


def _scratch(path: str, size_mb: int) -> None:
    os.makedirs(path, 0o755, exist_ok=True)
    _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, f"mode=1777,size={size_mb}m,nr_inodes=4096")


def _pivot(root: str) -> None:
    """Makes `root` the root of this mount namespace and drops the old one from it entirely."""
    os.chdir(root)
    os.mkdir(".old-root")
    _call("syscall", ctypes.c_long(_SYS_PIVOT_ROOT[seccomp.machine()]), b".", b".old-root")
    os.chdir("/")
    _call("umount2", b"/.old-root", ctypes.c_int(_MNT_DETACH))
    os.rmdir("/.old-root")


# --- runner: from the setup's state to the harness ------------------------------------------------

def _set_limits(config: Config) -> None:
    mib, cpu_s = 1 << 20, math.ceil(config.timeout) + 1
    for res, value in ((resource.RLIMIT_AS, config.memory_mb * mib), (resource.RLIMIT_CPU, cpu_s),
                       (resource.RLIMIT_FSIZE, config.file_size_mb * mib), (resource.RLIMIT_NOFILE, config.open_files),
                       (resource.RLIMIT_NPROC, config.processes), (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))


def _closed_to_others(trees: list[str]) -> str:
    """"" where another uid can run the interpreter, else what stops it. Only directories inside
    `trees` count: the private root recreates those above them, open to all."""
    exe = _realpath(sys.executable)
    for path, bit, what in ((exe, 0o001, "execute"), (os.__file__, 0o004, "read")):
        mode = os.stat(path).st_mode
        if not mode & bit:
            return f"other users may not {what} {path} (mode {mode & 0o777:o})"
        directory = os.path.dirname(path)
        while _covered(directory, trees):
            mode = os.stat(directory).st_mode
            if not mode & 0o001:
                return f"{directory} (mode {mode & 0o777:o}) is closed to other users"
            if directory == "/":
                break
            directory = os.path.dirname(directory)
    return ""


def _drop_bounding_set() -> None:
    """Empties the bounding set, so that no later exec can gain a capability, even as uid 0."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError:
            return  # without CAP_SETPCAP there is nothing to drop


def _drop_capabilities() -> None:
    """The bounding set, then the effective, permitted and inheritable sets: all empty."""
    _drop_bounding_set()
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _call("capset", ctypes.byref(header), ctypes.byref(data))


def _uid_drop_blocker(in_root: bool) -> str:
    """Why a root evaluator's check cannot run as the sandbox uid ("" where it can, or when not root)."""
    if os.geteuid() != 0:
        return ""
    interpreter = [_realpath(sys.base_prefix), os.path.dirname(_realpath(sys.executable))]
    return _closed_to_others(interpreter if in_root else ["/"])


def _identity(config: Config, namespaces: list[str], closed: str) -> str:
    """Becomes unprivileged; returns the isolation label of the identity. Raises Refused where the
    root evaluator cannot drop to the sandbox uid (`closed`: the interpreter is closed to others)."""
    if os.geteuid() != 0:
        _drop_capabilities()
        return "nocaps" if "user" in namespaces else "user"
    if closed:
        if not config.unsafe:
            raise Refused(f"cannot drop to an unprivileged uid, the interpreter is unreadable to other users: {closed}")
        _drop_capabilities()
        return "root-nocaps(no uid drop: the interpreter is unreadable to other users)"
    _drop_bounding_set()
    os.setgroups([])
    os.setresgid(config.uid, config.uid, config.uid)
    os.setresuid(config.uid, config.uid, config.uid)  # clears the remaining capability sets
    return "uid"


def _landlock_rules(in_root: bool, trees: list[str], config: Config) -> list[tuple[str, int]]:
    if not in_root:  # the host's file system: the interpreter wherever it is installed
        trees = sorted(set(_interpreter_trees()))
    rules = [(path, landlock.READ_EXECUTE) for path in SYSTEM_TREES + tuple(t for t in trees if t != "/etc")]
    rules += [(path, landlock.READ) for path in ETC_READABLE]
    rules += [(f"/dev/{name}", landlock.DEVICE) for name in DEVICES]
    if in_root:  # /proc is the check's own PID namespace's
        rules += [("/proc", landlock.READ), (CHECK_DIR, landlock.READ), ("/tmp", landlock.WRITE_TREE),
                  ("/dev/shm", landlock.WRITE_TREE)]
    else:  # the host's /proc: only this process's own entry (not the evaluator's environment)
        rules += [("/proc/self", landlock.READ), (config.workdir, landlock.WRITE_TREE)]
    return rules


def _confine(config: Config, trees: list[str], in_root: bool) -> list[str]:
    """no_new_privs, Landlock and seccomp; their isolation labels. Raises Refused where seccomp is
    missing and the evaluator did not ask for unsafe runs."""
    seccomp.set_no_new_privs()
    labels = ["nnp"]
    abi = landlock.abi_version()
    if abi:
        landlock.restrict(_landlock_rules(in_root, trees, config), abi)
        labels.append(f"landlock(abi{abi})")
    else:
        labels.append("no-landlock")
    try:
        if not seccomp.supported():
            raise OSError(errno.ENOSYS, f"no seccomp rules for the {seccomp.machine()} architecture")
        seccomp.install(seccomp.compile_rules(seccomp.check_rules()))
        labels.insert(1, "seccomp")
    except OSError as e:
        if not config.unsafe:
            raise Refused(f"cannot install the seccomp filter: {e}") from None
        labels.insert(1, "no-seccomp")
    return labels


def _run_harness(config: Config, namespaces: list[str], trees: list[str], cgroup: str, in_root: bool) -> None:
    """In the forked runner: descriptors, limits, identity, confinement, then the harness in this
    interpreter, with what an exec of `python -I -S -c <harness.py> PROGRAM MARKER` would give it:
    its environment and arguments, and descriptors 0-4 only (closed above)."""
    import fcntl

    reply, request = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (config.reply_fd, config.request_fd))
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(reply, 3)
    os.dup2(request, 4)
    os.closerange(5, max(1 << 16, os.sysconf("SC_OPEN_MAX")))  # no exec follows to close the CLOEXEC ones
    config.reply_fd, config.request_fd = 3, 4  # where a refusal below goes (see _fork_and_reap)
    _set_limits(config)
    home = "/tmp" if in_root else os.path.join(config.workdir, "work")
    program = CHECK_DIR + "/program.py" if in_root else os.path.join(config.workdir, "program.py")
    identity = _identity(config, namespaces, _uid_drop_blocker(in_root))
    die_with_parent()  # after the uid change, which clears it; a PID namespace implies it anyway
    _prctl(_PR_SET_DUMPABLE, 1)  # as an exec would leave it (init's 0, the uid change's): its own /proc entries
    labels = _confine(config, trees, in_root)
    parts = [f"namespaces({','.join(namespaces)})" if namespaces else "UNCONFINED(no namespaces)", identity]
    _send(3, "isolation", "+".join(parts + labels + [cgroup]))
    os.chdir(home)
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "OMP_NUM_THREADS": "1"}
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["-c", program, config.marker]
    try:
        exec(config.harness, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:  # noqa: BLE001 - the program's to raise: it ends as `python -c` would, not as the setup
        os._exit(1)
    os._exit(0)


def _init(config: Config, program: bytes, namespaces: list[str], cgroup: str) -> int:
    """As PID 1 of the new namespaces (or in the setup itself, without them): the root, then the runner."""
    die_with_parent()  # a fork's is cleared: when the setup dies, so does PID 1, and the namespace with it
    in_root = bool(namespaces)
    trees: list[str] = []
    if in_root:
        try:
            trees = _build_root(config.workdir, config, program)
        except OSError as e:
            raise Refused(f"cannot build the private read-only root: {e}") from None
        namespaces.insert(1 if "user" in namespaces else 0, "mnt-ro")
        _prctl(_PR_SET_DUMPABLE, 0)  # the check's processes may not ptrace or read this one
    else:
        _prepare_workdir(config, program)
    return _fork_and_reap(lambda: _run_harness(config, namespaces, trees, cgroup, in_root), config)


def _prepare_workdir(config: Config, program: bytes) -> None:
    """Without namespaces: the program and a home in the evaluator's work directory, usable by the uid."""
    os.chmod(config.workdir, 0o755)
    with open(os.path.join(config.workdir, "program.py"), "wb") as f:
        f.write(program)
    home = os.path.join(config.workdir, "work")
    os.mkdir(home, 0o700)
    if os.geteuid() == 0 and not _uid_drop_blocker(in_root=False):
        os.chown(home, config.uid, config.uid)


def _fork_and_reap(child, config: Config) -> int:
    """Runs `child` in a forked process and waits for it, reaping any orphan on the way (as PID 1
    of a namespace, orphans of the program land here). Returns its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        except Refused as e:
            _send(config.reply_fd, "refused", str(e))
        except BaseException as e:
            _send(config.reply_fd, "setup-error", repr(e))
        finally:
            os._exit(127)
    # Close our copies, so that the evaluator sees EOF as soon as the harness and its children are gone.
    os.close(config.reply_fd)
    os.close(config.request_fd)
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            return 1
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    config = Config(argv)
    program = sys.stdin.buffer.read()
    os.umask(0o022)
    die_with_parent()
    cgroup = _join_cgroup(config)
    try:
        namespaces = _unshare()
    except Refused as e:
        if not config.unsafe:
            _send(config.reply_fd, "refused", str(e))
            return 3
        namespaces = []
    if not namespaces:
        try:
            return _init(config, program, [], cgroup)
        except Refused as e:
            _send(config.reply_fd, "refused", str(e))
            return 3
    # The next child is PID 1 of the new PID namespace; when it exits, the kernel kills the rest.
    return _fork_and_reap(lambda: os._exit(_init(config, program, namespaces, cgroup)), config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
