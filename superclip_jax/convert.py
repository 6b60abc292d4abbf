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

import argparse

from superclip_jax.errors import user_errors


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog='python -m superclip_jax.convert', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument('--from', dest='source_kind', choices=('openai', 'open_clip', 'hf'))
  direction.add_argument('--to', dest='target_kind', choices=('hf', 'open_clip'))
  parser.add_argument('--src', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--image-heads', type=int, default=0, help='default: config.json, else width / 64')
  parser.add_argument('--text-heads', type=int, default=0, help='default: config.json, else width / 64')
  parser.add_argument(
    '--quick-gelu',
    choices=('true', 'false'),
    default=None,
    help='default: true for openai, config.json / open_clip_config.json, else false',
  )
  parser.add_argument(
    '--tokenizer', default='', help="tokenizer spec recorded in the export (default 'clip' when the vocabulary is 49,408)"
  )
  parser.add_argument('--format', choices=('safetensors', 'bin'), default='safetensors', help='--to open_clip')
  args = parser.parse_args(argv)
  with user_errors('superclip_jax.convert'):
    from superclip_jax.interop import conversions

    if args.source_kind:
      quick = None if args.quick_gelu is None else args.quick_gelu == 'true'
      print(
        conversions.convert_in(
          args.source_kind,
          args.src,
          args.out,
          args.tokenizer,
          quick_gelu=quick,
          image_heads=args.image_heads,
          text_heads=args.text_heads,
        )
      )
    else:
      print(conversions.convert_out(args.target_kind, args.src, args.out, args.format))


if __name__ == '__main__':
  main()
