"""A ctypes binding to libnftables (`libnftables.so.1`): nft scripts run inside a lab namespace.

    nft = Nft("ft-lab-node-a")                 # its netlink socket lives in that namespace
    nft.run("add table inet flowtui")          # one call is one transaction; raises NftError
    text = nft.run("list table inet flowtui")
    nft.close()

The context is created by a thread that has entered the namespace (`enforcer.lab.kernel.in_netns`,
the only way this project enters one): libnftables opens its netlink socket in `nft_ctx_new`, and
a socket stays in the namespace it was created in, so every later call, from any thread, changes
that namespace's nftables and no other. Calls themselves run in the caller's thread. What still
follows the calling thread's namespace is the translation between interface names and indexes
(`iif`/`oif` with a name, and printing them back): the compiler matches `iifname`/`oifname`, which
are plain strings, so this never matters here.

Scripts go to libnftables as an in-memory file (memfd) rather than a buffer: for a buffer,
libnftables 1.0.6 prints the first line of the script under every error, whatever line was wrong;
for a file it reports `FILE:LINE:COLUMNS: Error: ...`, which `NftError` turns into the line number
and the offending line.

Cost per call, measured on the project's 2-vCPU VM (kernel 6.18, nft 1.0.6): `list tables` ~60 µs
through a buffer and ~85 µs through the memfd; entering the namespace for every call instead
(a thread per call) would cost ~0.8 ms. In a table of 1,000 chains, rewriting one chain takes
1.0-1.6 ms (median), creating the whole table 65-100 ms, `list table` 17-28 ms
(`tests/test_nft_backend.py::test_latency_one_chain_of_1000` prints them).

All calls into the library are serialised by one process-wide lock: libnftables keeps global state
(its caches and parser set-up are not safe to enter concurrently), and a call takes microseconds.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import weakref
from dataclasses import dataclass

from enforcer.lab.kernel import check_lab_netns, in_place, place_identity, place_label

LIBRARY = "libnftables.so.1"

# Output flags (include/nftables/libnftables.h).
OUTPUT_STATELESS = 1 << 2  # omit counters, quotas and other state: stable listings
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4

_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_ERROR = re.compile(r"^(?P<file>/proc/self/fd/\d+):(?P<line>\d+):(?P<cols>\d+(?:-\d+)?): Error: (?P<msg>.*)$")


def _library() -> ctypes.CDLL:
    """Load libnftables once and declare the signatures used here (call with _LOCK held)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as exc:
        raise NftError(f"cannot load {LIBRARY} ({exc}): install the libnftables1 package") from exc
    ctx, text = ctypes.c_void_p, ctypes.c_char_p
    signatures: dict[str, tuple[object, list[object]]] = {
        "nft_ctx_new": (ctx, [ctypes.c_uint32]),
        "nft_ctx_free": (None, [ctx]),
        "nft_ctx_buffer_output": (ctypes.c_int, [ctx]),
        "nft_ctx_buffer_error": (ctypes.c_int, [ctx]),
        "nft_ctx_get_output_buffer": (text, [ctx]),
        "nft_ctx_get_error_buffer": (text, [ctx]),
        "nft_ctx_output_get_flags": (ctypes.c_uint, [ctx]),
        "nft_ctx_output_set_flags": (None, [ctx, ctypes.c_uint]),
        "nft_run_cmd_from_buffer": (ctypes.c_int, [ctx, text]),
        "nft_run_cmd_from_filename": (ctypes.c_int, [ctx, text]),
    }
    for name, (restype, argtypes) in signatures.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    _lib = lib
    return lib


@dataclass(frozen=True)
class NftProblem:
    """One error libnftables reported: script line (1-based, 0 if unknown), columns and message."""

    line: int
    columns: str
    message: str
    text: str  # the script line itself ("" if unknown)

    def __str__(self) -> str:
        if not self.line:
            return self.message
        return f"line {self.line}: {self.message}\n    {self.text}"


class NftError(Exception):
    """libnftables refused a script (or could not be used); nothing of the script took effect.

    `problems` holds each error with its script line; `str()` gives the kernel's or the parser's
    message followed by the offending line.
    """

    def __init__(self, message: str, script: str = "", problems: tuple[NftProblem, ...] = ()) -> None:
        self.script = script
        self.problems = problems
        super().__init__(message)

    @property
    def missing(self) -> bool:
        """The command named a table, chain or set that does not exist (ENOENT)."""
        return any("No such file or directory" in p.message for p in self.problems)


def parse_errors(errors: str, script: str) -> tuple[NftProblem, ...]:
    """libnftables' error text → problems with the line of `script` each one is about."""
    lines = script.split("\n")
    problems: list[NftProblem] = []
    for raw in errors.splitlines():
        match = _ERROR.match(raw)
        if match:
            number = int(match["line"])
            text = lines[number - 1] if 0 < number <= len(lines) else ""
            problems.append(NftProblem(number, match["cols"], match["msg"], text))
        elif raw.startswith("Error: "):
            problems.append(NftProblem(0, "", raw[len("Error: ") :], ""))
    return tuple(problems)


class Nft:
    """One libnftables context whose netlink socket lives in lab namespace `netns`, or (None) in
    the namespace the process runs in (`flowtui agent --host`)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = None if netns is None else check_lab_netns(netns)
        self.label = place_label(netns)
        with _LOCK:
            lib = _library()

            def create() -> tuple[int | None, tuple[int, int]]:
                here = os.stat("/proc/thread-self/ns/net")
                return lib.nft_ctx_new(0), (here.st_dev, here.st_ino)

            ctx, self._inode = in_place(netns, create)
            if not ctx:
                raise NftError(f"nft_ctx_new failed in {self.label}")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            self._ctx: int | None = ctx
            self._lib = lib
            # An Nft dropped without close() still frees its context (and its socket, which
            # would otherwise keep a removed namespace alive).
            self._finalizer = weakref.finalize(self, _free, lib, ctx)

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def current(self) -> bool:
        """Whether `netns` is still the namespace this context was made in (not removed and
        re-created since: a socket keeps a removed namespace alive, unreachable by name)."""
        return place_identity(self.netns) == self._inode and not self.closed

    def run(self, script: str, *, flags: int = 0) -> str:
        """Run `script` (one or more commands, one atomic transaction) and return its output.

        `flags` are output flags for this call (OUTPUT_JSON, OUTPUT_STATELESS, ...). Raises
        NftError with every problem (line and text) when libnftables or the kernel refuses it.
        """
        fd = os.memfd_create("flowtui-nft", os.MFD_CLOEXEC)
        try:
            data = memoryview(script.encode())
            while data:
                data = data[os.write(fd, data) :]
            with _LOCK:
                if self._ctx is None:
                    raise NftError(f"nft context for {self.label} is closed")
                lib = self._lib
                if lib.nft_ctx_output_get_flags(self._ctx) != flags:
                    lib.nft_ctx_output_set_flags(self._ctx, flags)
                rc = lib.nft_run_cmd_from_filename(self._ctx, f"/proc/self/fd/{fd}".encode())
                output = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
                errors = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        finally:
            os.close(fd)
        if rc != 0:
            problems = parse_errors(errors, script)
            message = "\n".join(str(p) for p in problems) or errors.strip() or f"nft failed (rc {rc})"
            raise NftError(f"{self.label}: {message}", script, problems)
        return output

    def close(self) -> None:
        with _LOCK:
            self._ctx = None
        self._finalizer()


def _free(lib: ctypes.CDLL, ctx: int) -> None:
    with _LOCK:
        lib.nft_ctx_free(ctx)


def run_here(command: str, *, flags: int = 0) -> str:
    """Run a (read-only) command with a temporary context in the calling thread's namespace.

    For readers that are already inside a namespace (the collector's counter poller enters it with
    `in_netns`, or reads the host's); the long-lived, lab-only `Nft` is for applying tables.
    """
    with _LOCK:
        lib = _library()
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            lib.nft_ctx_output_set_flags(ctx, flags)
            rc = lib.nft_run_cmd_from_buffer(ctx, command.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            errors = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError(f"{command}: {errors.strip() or f'nft failed (rc {rc})'}")
    return output


__all__ = [
    "OUTPUT_HANDLE", "OUTPUT_JSON", "OUTPUT_STATELESS", "Nft", "NftError", "NftProblem", "parse_errors", "run_here",
]
