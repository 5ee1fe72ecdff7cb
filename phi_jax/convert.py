"""Converts weights between Hugging Face phi directories and phi_jax's orbax workdirs.

    python -m phi_jax.convert hf_to_orbax --hf_dir=phi-1/ --out=runs/phi1_hf
    python -m phi_jax.convert orbax_to_hf --workdir=runs/pretrain --out=export/ [--step=N]
        [--dtype=bfloat16]

hf_to_orbax writes OUT/checkpoints/0, which training (`train.init_from`), generation and
evaluation read like any workdir; orbax_to_hf exports a workdir's step (default: the newest
intact one) as a transformers PhiForCausalLM directory. The format itself is phi_jax.hf_format.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from phi_jax import checkpoint, cli, files, hf_format
from phi_jax import model as model_lib


def hf_to_orbax(hf_dir: str, out: str) -> None:
  """Writes the Hugging Face directory `hf_dir` as step 0 of the workdir `out`."""
  hf_dir, out = files.existing(hf_dir, "--hf_dir"), files.absolute(out)
  config, params = hf_format.load_hf(hf_dir)
  checkpoint.save_params(out, config, params, init_from={"huggingface": hf_dir})
  print(f"wrote {model_lib.num_params(config):,} params to {Path(out) / 'checkpoints' / '0'}")


def orbax_to_hf(workdir: str, out: str, step: int | None = None, dtype: str | None = None) -> None:
  """Writes step `step` of `workdir` (default: the newest intact one) as a Hugging Face
  directory `out`, its tensors in `dtype` (default: the params' own)."""
  workdir, out = files.existing(workdir, "--workdir"), files.absolute(out)
  config, params = checkpoint.restore_params(workdir, step)
  hf_format.save_hf(config, params, out, dtype=dtype)
  print(f"wrote Hugging Face PhiForCausalLM to {out}")


# Each command's flags, the required ones first.
_COMMANDS = {
  "hf_to_orbax": (hf_to_orbax, ("hf_dir", "out"), ()),
  "orbax_to_hf": (orbax_to_hf, ("workdir", "out"), ("step", "dtype")),
}


def main(argv: list[str]) -> None:
  """Runs the command named by the one positional argument (absl leaves it in argv)."""
  expected = f"expected {' or '.join(_COMMANDS)}"
  if len(argv) < 2:
    cli.fail(f"no command given: {expected}", status=2)
  command = argv[1]
  if command not in _COMMANDS:
    cli.fail(f"unknown command {command!r}: {expected}", status=2)
  if len(argv) > 2:
    cli.fail(f"unexpected arguments after {command}: {' '.join(argv[2:])}", status=2)
  run_command, required, optional = _COMMANDS[command]
  flag_values = flags.FLAGS
  for name in required:
    if flag_values[name].value is None:
      cli.fail(f"{command} needs --{name}", status=2)
  for _, other_required, other_optional in _COMMANDS.values():
    for name in other_required + other_optional:
      if flag_values[name].present and name not in required + optional:
        cli.fail(f"{command} takes no --{name}", status=2)
  run_command(**{name: flag_values[name].value for name in required + optional})


if __name__ == "__main__":
  # Flags are defined here, not at import, so that other programs can import this module.
  flags.DEFINE_string("hf_dir", None, "hf_to_orbax: the Hugging Face directory to read.")
  flags.DEFINE_string(
    "out",
    None,
    "hf_to_orbax: the workdir to write (as OUT/checkpoints/0); "
    "orbax_to_hf: the Hugging Face directory to write (new or empty).",
  )
  flags.DEFINE_string("workdir", None, "orbax_to_hf: the workdir whose checkpoint to export.")
  flags.DEFINE_integer("step", None, "orbax_to_hf: the step (default: the newest intact one).")
  flags.DEFINE_enum(
    "dtype",
    None,
    sorted(model_lib.DTYPES),
    "orbax_to_hf: the tensor dtype on disk (default: the params' own).",
  )
  cli.run(main)
