"""The seccomp filter of the sandbox: kernel interfaces a benchmark program never needs.

A classic-BPF program (what `bwrap --seccomp FD` reads) that makes these fail with EPERM:
new namespaces (`unshare`, `setns`, and `clone` with any CLONE_NEW* flag: a nested user
namespace would hand the program every capability over new namespaces of its own, the entry
point of many kernel exploits), `mount`/`umount2`/`pivot_root`, `ptrace`, the kernel keyring,
`bpf`, `perf_event_open`, `userfaultfd` and io_uring; and system calls of another ABI (x32,
i386) on x86-64. `clone3` fails with ENOSYS, so that the C library falls back to `clone`, whose
flags the filter can read. Everything else is allowed.

Built for x86-64 and aarch64; on other machines `program()` returns None and the sandbox runs
without the filter (its other walls are the same).
"""

from __future__ import annotations

import platform
import struct

# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k.
_INSN = struct.Struct("=HBBI")
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_EPERM, _ENOSYS = 1, 38
_X32_BIT = 0x40000000
# Offsets in struct seccomp_data: nr, arch, then args[0] (its low 32 bits, little-endian).
_NR, _ARCH, _ARG0 = 0, 4, 16
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NEW = (
  0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

_BLOCKED = (
  "unshare",
  "setns",
  "mount",
  "umount2",
  "pivot_root",
  "ptrace",
  "keyctl",
  "add_key",
  "request_key",
  "bpf",
  "perf_event_open",
  "userfaultfd",
  "io_uring_setup",
  "io_uring_enter",
  "io_uring_register",
)
_ARCHES = {
  "x86_64": (
    0xC000003E,
    dict(
      clone=56,
      clone3=435,
      unshare=272,
      setns=308,
      mount=165,
      umount2=166,
      pivot_root=155,
      ptrace=101,
      keyctl=250,
      add_key=248,
      request_key=249,
      bpf=321,
      perf_event_open=298,
      userfaultfd=323,
      io_uring_setup=425,
      io_uring_enter=426,
      io_uring_register=427,
    ),
  ),
  "aarch64": (
    0xC00000B7,
    dict(
      clone=220,
      clone3=435,
      unshare=97,
      setns=268,
      mount=40,
      umount2=39,
      pivot_root=41,
      ptrace=117,
      keyctl=219,
      add_key=217,
      request_key=218,
      bpf=280,
      perf_event_open=241,
      userfaultfd=282,
      io_uring_setup=425,
      io_uring_enter=426,
      io_uring_register=427,
    ),
  ),
}


def program(machine: str | None = None) -> bytes | None:
  """The filter for `machine` (default: this one) as bytes, or None where there is no table."""
  machine = machine or platform.machine()
  if machine not in _ARCHES:
    return None
  arch, numbers = _ARCHES[machine]
  # Jump offsets count instructions after the jump; the tail holds the shared returns.
  body = [("ld", _NR)]
  if machine == "x86_64":
    body.append(("ge", _X32_BIT, "eperm"))
  body += [("eq", numbers[name], "eperm") for name in _BLOCKED]
  body += [("eq", numbers["clone3"], "enosys"), ("eq", numbers["clone"], "clone")]
  tail = {
    "allow": [(_RET, _ALLOW)],
    "clone": [("ld", _ARG0), ("set", _CLONE_NEW, "eperm"), (_RET, _ALLOW)],
    "eperm": [(_RET, _ERRNO | _EPERM)],
    "enosys": [(_RET, _ERRNO | _ENOSYS)],
  }
  head = [("ld", _ARCH), ("eq", arch, None)]  # another arch: fall through to EPERM below
  layout = head + body + tail["allow"] + tail["clone"] + tail["eperm"] + tail["enosys"]
  where = {"allow": len(head) + len(body), "clone": len(head) + len(body) + 1}
  where["eperm"] = where["clone"] + len(tail["clone"])
  where["enosys"] = where["eperm"] + 1
  out = []
  for index, insn in enumerate(layout):
    kind = insn[0]
    if kind == "ld":
      out.append(_INSN.pack(_LD_W_ABS, 0, 0, insn[1]))
    elif kind == _RET:
      out.append(_INSN.pack(_RET, 0, 0, insn[1]))
    else:
      code = {"eq": _JEQ, "ge": _JGE, "set": _JSET}[kind]
      if insn[2] is None:  # the arch check: match -> next; else -> EPERM
        true, false = 0, where["eperm"] - index - 1
      else:
        true, false = where[insn[2]] - index - 1, 0
      out.append(_INSN.pack(code, true, false, insn[1]))
  return b"".join(out)
