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

import argparse
import sys

import numpy as np


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--hf', help='a `convert --to hf` directory')
  parser.add_argument('--open_clip', help='a `convert --to open_clip` directory')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  inputs = dict(np.load(args.inputs))
  out = {}
  if args.hf:
    run_hf(args.hf, inputs, out)
  if args.open_clip:
    run_open_clip(args.open_clip, inputs, out)
  assert 'superclip_jax' not in sys.modules  # the point of this process
  out.update({k.replace('_scores', '_pred'): v.argmax(axis=1) for k, v in out.items() if k.endswith('_scores')})
  np.savez(args.out, **out)


if __name__ == '__main__':
  main()
