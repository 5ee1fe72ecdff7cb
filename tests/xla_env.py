"""The XLA settings of the test session and of the trainer processes tests start: simulated CPU
devices, and optimization level 0, since tests compile many small programs on which LLVM's
optimizations cost more time than they save (one test file took a third less)."""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def flags(devices: int) -> str:
  """XLA_FLAGS for a process with `devices` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
