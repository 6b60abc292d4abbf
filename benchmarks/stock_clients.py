"""superclip_jax's exports in the stock PyTorch clients, in a process that never imports superclip_jax.

  python benchmarks/stock_clients.py --inputs inputs.npz --hf HF_DIR --open_clip OPEN_CLIP_DIR --out results.npz

What a user of transformers or open_clip does with `python -m superclip_jax.convert --to hf` and
`--to open_clip` outputs, and nothing more: `CLIPModel.from_pretrained`, the
`zero-shot-image-classification` pipeline, `open_clip.create_model_and_transforms('local-dir:...')`.

inputs.npz:
  pixels       (N, S, S, 3) float32, already normalised: the one tensor every side embeds
  ids          (M, L) int token ids
  images       (K, H, W, 3) uint8, optional: classified with each client's own preprocessing and tokenizer
  class_names  (C,) str; templates (T,) str with '{}' (the pipeline takes the first); with images
results.npz:
  hf_image, hf_text, open_clip_image, open_clip_text: L2-normalised embeddings of pixels and ids
  hf_scores, open_clip_scores: (K, C) cosines of the images and the class embeddings averaged over the
    templates (with images); pipeline_scores: (K, C) the pipeline's probabilities, in class order
  hf_pred, open_clip_pred, pipeline_pred: (K,) the top class of each
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

PROG = 'stock_clients.py'
_HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')  # absl's; each exits 1 after printing


def _normalise(x):
  return x / x.norm(dim=-1, keepdim=True)


def _features(out):
  """get_image_features / get_text_features: a tensor in transformers 4, the projection as pooler_output in 5."""
  return getattr(out, 'pooler_output', out)


def _zero_shot(encode_texts, image_embeddings, class_names, templates):
  """(K, C) cosines of normalised image embeddings and template-averaged class embeddings (OpenAI's ensemble)."""
  import torch

  per_class = []
  for name in class_names:
    e = _normalise(encode_texts([t.format(name) for t in templates])).mean(dim=0)
    per_class.append(e / e.norm())
  return (image_embeddings @ torch.stack(per_class).T).numpy()


def run_hf(directory, inputs, out):
  import torch
  import transformers
  from PIL import Image

  model = transformers.CLIPModel.from_pretrained(directory).eval()
  processor = transformers.CLIPProcessor.from_pretrained(directory)
  with torch.no_grad():
    pixels = torch.from_numpy(inputs['pixels'].transpose(0, 3, 1, 2).copy())
    out['hf_image'] = _normalise(_features(model.get_image_features(pixel_values=pixels))).numpy()
    ids = torch.from_numpy(inputs['ids'].astype(np.int64))
    out['hf_text'] = _normalise(_features(model.get_text_features(input_ids=ids))).numpy()
    if 'images' not in inputs:
      return
    images = [Image.fromarray(im) for im in inputs['images']]
    image_emb = _normalise(_features(model.get_image_features(**processor(images=images, return_tensors='pt'))))

    def encode_texts(texts):
      tokens = processor.tokenizer(
        texts, padding=True, truncation=True, return_tensors='pt', max_length=model.config.text_config.max_position_embeddings
      )
      return _features(model.get_text_features(**tokens))

    out['hf_scores'] = _zero_shot(encode_texts, image_emb, inputs['class_names'], inputs['templates'])
  classifier = transformers.pipeline('zero-shot-image-classification', model=directory, device='cpu')
  names = [str(c) for c in inputs['class_names']]
  results = classifier(images, candidate_labels=names, hypothesis_template=str(inputs['templates'][0]))
  scores = np.zeros((len(images), len(names)), np.float32)
  for i, result in enumerate(results):
    for entry in result:
      scores[i, names.index(entry['label'])] = entry['score']
  out['pipeline_scores'] = scores


def run_open_clip(directory, inputs, out):
  import open_clip
  import torch
  from PIL import Image

  model, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{directory}')
  model.eval()
  tokenizer = open_clip.get_tokenizer(f'local-dir:{directory}')
  with torch.no_grad():
    pixels = torch.from_numpy(inputs['pixels'].transpose(0, 3, 1, 2).copy())
    out['open_clip_image'] = model.encode_image(pixels, normalize=True).numpy()
    out['open_clip_text'] = model.encode_text(torch.from_numpy(inputs['ids'].astype(np.int64)), normalize=True).numpy()
    if 'images' not in inputs:
      return
    images = torch.stack([preprocess(Image.fromarray(im)) for im in inputs['images']])
    image_emb = model.encode_image(images, normalize=True)
    out['open_clip_scores'] = _zero_shot(
      lambda texts: model.encode_text(tokenizer(texts)), image_emb, inputs['class_names'], inputs['templates']
    )


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('inputs', None, 'inputs.npz (see above)', required=True, flag_values=v)
  flags.DEFINE_string('hf', None, 'a `convert --to hf` directory', flag_values=v)
  flags.DEFINE_string('open_clip', None, 'a `convert --to open_clip` directory', flag_values=v)
  flags.DEFINE_string('out', None, 'results.npz (see above)', required=True, flag_values=v)


def _parse(argv: list[str], v: flags.FlagValues) -> list[str]:
  """absl's flag parse with a mistake in one line, `stock_clients.py: error: ...` (exit 2), and --help exit 0.

  superclip_jax's commands module does this for the package's commands; this process must not import it.
  """
  try:
    rest = v(argv)
  except SystemExit as e:  # absl's --help prints the help and exits 1; asking for help is not a failure
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    extra = ' (try --helpfull)' if isinstance(e, flags.UnrecognizedFlagError) else ''
    _fail(lines[0] + extra)
  if rest[1:]:
    _fail(f'unexpected arguments: {rest[1:]}')
  return rest


def _fail(message: str):
  print(f'{PROG}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def _run(values: flags.FlagValues) -> None:
  inputs = dict(np.load(values.inputs))
  out = {}
  if values.hf:
    run_hf(values.hf, inputs, out)
  if values.open_clip:
    run_open_clip(values.open_clip, inputs, out)
  assert 'superclip_jax' not in sys.modules  # the point of this process
  out.update({k.replace('_scores', '_pred'): v.argmax(axis=1) for k, v in out.items() if k.endswith('_scores')})
  np.savez(values.out, **out)


def main(argv: list[str] | None = None):
  """`python benchmarks/stock_clients.py` (argv None), or its flags as a list, in this process on flags of its own."""
  if argv is None:
    _define_flags(flags.FLAGS)
    app.run(lambda _: _run(flags.FLAGS), flags_parser=lambda args: _parse(args, flags.FLAGS))
    return
  values = flags.FlagValues()
  _define_flags(values)
  _parse([PROG, *argv], values)
  _run(values)


if __name__ == '__main__':
  main()
