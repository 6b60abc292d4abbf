"""Convert CLIP weights between PyTorch (OpenAI, OpenCLIP, SuperCLIP, transformers) and superclip_jax.

  python -m superclip_jax.convert --from openai|open_clip|hf --src PATH --out MODEL
  python -m superclip_jax.convert --to hf|open_clip --src MODEL_OR_WORKDIR --out DIR

--from reads a state dict (.safetensors, or a torch pickle through torch.load(weights_only=True);
OpenAI's TorchScript .pt archives must be re-saved as a state dict first), an OpenCLIP
directory (open_clip_config.json + open_clip_model.safetensors) or an HF CLIPModel directory,
infers the model's sizes from its shapes, and writes an export that `superclip_jax.load`,
`--config.init_from` and `python -m superclip_jax.evaluate --model` take. A SuperCLIP
checkpoint's token classifier (`text_decoder.*`) comes along. --to writes the reverse; the
token classifier goes to token_classifier.safetensors beside the weights.
"""

from __future__ import annotations

from absl import flags

from superclip_jax import commands
from superclip_jax.errors import user_errors


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_enum(
    'from', None, ['openai', 'open_clip', 'hf'], 'Convert PyTorch weights of this kind to an export.', flag_values=v
  )
  flags.DEFINE_enum(
    'to', None, ['hf', 'open_clip'], 'Convert an export or a workdir to PyTorch weights of this kind.', flag_values=v
  )
  flags.mark_flags_as_mutual_exclusive(['from', 'to'], required=True, flag_values=v)
  flags.DEFINE_string('src', None, 'What to convert.', required=True, flag_values=v)
  flags.DEFINE_string('out', None, 'Where the converted model goes.', required=True, flag_values=v)
  flags.DEFINE_integer('image_heads', 0, 'Default: config.json, else width / 64.', flag_values=v)
  flags.DEFINE_integer('text_heads', 0, 'Default: config.json, else width / 64.', flag_values=v)
  flags.DEFINE_bool(
    'quick_gelu', None, 'Default: true for openai, config.json / open_clip_config.json, else false.', flag_values=v
  )
  flags.DEFINE_string(
    'tokenizer', '', "Tokenizer spec recorded in the export (default 'clip' when the vocabulary is 49,408).", flag_values=v
  )
  flags.DEFINE_enum(
    'format', 'safetensors', ['safetensors', 'bin'], 'With --to open_clip: the weights file format.', flag_values=v
  )


def _convert(v: flags.FlagValues, _args: list[str]) -> None:
  with user_errors('superclip_jax.convert'):
    from superclip_jax.interop import conversions

    if v['from'].value:
      print(
        conversions.convert_in(
          v['from'].value,
          v.src,
          v.out,
          v.tokenizer,
          quick_gelu=v.quick_gelu,
          image_heads=v.image_heads,
          text_heads=v.text_heads,
        )
      )
    else:
      print(conversions.convert_out(v.to, v.src, v.out, v.format))


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.convert` (argv None), or its flags as a list, in this process."""
  commands.command('superclip_jax.convert', _define_flags, _convert, argv)


if __name__ == '__main__':
  main()
