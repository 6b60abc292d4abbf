"""Test helpers: small random PyTorch CLIP models (transformers, OpenCLIP, SuperCLIP layout) and their outputs."""

from __future__ import annotations

import numpy as np
import torch


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
  """Add noise to every parameter, so LayerNorm scales / biases are not trivially 1 / 0."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn(p.shape, generator=g))
  return module.eval()


def text_ids(batch: int, length: int, vocab: int, seed: int) -> np.ndarray:
  """SOT, random tokens, EOT (= vocab - 1, the largest id as in CLIP's BPE), then padding 0."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, length), np.int64)
  for i in range(batch):
    n = int(rng.integers(1, length - 1))
    ids[i, 0] = vocab - 2
    ids[i, 1:n] = rng.integers(1, vocab - 2, n - 1)
    ids[i, n] = vocab - 1
  return ids


def hf_clip(vocab=49408, width=64, heads=2, layers=2, patch=8, image=32, ctx=16, embed=32, act='quick_gelu', seed=0):
  """A random transformers CLIPModel (perturbed, eval mode)."""
  import transformers

  config = transformers.CLIPConfig(
    text_config=dict(
      vocab_size=vocab,
      hidden_size=width,
      intermediate_size=4 * width,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      max_position_embeddings=ctx,
      hidden_act=act,
      bos_token_id=vocab - 2,
      eos_token_id=vocab - 1,
      pad_token_id=1,
    ),
    vision_config=dict(
      hidden_size=width,
      intermediate_size=4 * width,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      image_size=image,
      patch_size=patch,
      hidden_act=act,
    ),
    projection_dim=embed,
  )
  torch.manual_seed(seed)
  return perturb(transformers.CLIPModel(config), seed)


def hf_outputs(model, images_nhwc: np.ndarray, ids: np.ndarray) -> dict:
  """Normalised image / text embeddings, logits and the vision tower's features of an HF CLIPModel."""
  with torch.no_grad():
    pv = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
    vis = model.vision_model(pixel_values=pv)
    img = model.visual_projection(vis.pooler_output)
    txt = model.text_projection(model.text_model(input_ids=torch.from_numpy(ids)).pooler_output)
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.T
  return {'image': img.numpy(), 'text': txt.numpy(), 'logits': logits.numpy(), 'pooled': vis.pooler_output.numpy()}


def open_clip_model(
  open_clip,
  quick_gelu: bool,
  vocab=49408,
  width=128,
  layers=2,
  patch=8,
  image=32,
  ctx=16,
  embed=32,
  text_heads=2,
  head_width=64,
  seed=0,
):
  """A random OpenCLIP `CLIP` ViT (perturbed, eval mode)."""
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(
    embed_dim=embed,
    quick_gelu=quick_gelu,
    vision_cfg=dict(image_size=image, layers=layers, width=width, head_width=head_width, patch_size=patch),
    text_cfg=dict(context_length=ctx, vocab_size=vocab, width=width, heads=text_heads, layers=layers),
  )
  return perturb(model, seed)


def open_clip_outputs(model, images_nhwc: np.ndarray, ids: np.ndarray, head: dict | None = None) -> dict:
  """Normalised embeddings and logits; with a SuperCLIP head (text_decoder.* tensors) its logits too."""
  with torch.no_grad():
    x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(torch.from_numpy(ids), normalize=True)
    out = {'image': img.numpy(), 'text': txt.numpy(), 'logits': (model.logit_scale.exp() * img @ txt.T).numpy()}
    if head is not None:
      # The authors' MixClsHead with layers=0: LayerNorm (ln_mlp) then Linear (text_projection)
      # on the mean of the patch tokens after ln_post, CLS excluded.
      model.visual.output_tokens = True
      _, tokens = model.visual(x)
      model.visual.output_tokens = False
      pooled = tokens.mean(dim=1)
      h = torch.nn.functional.layer_norm(
        pooled, (pooled.shape[-1],), head['text_decoder.ln_mlp.weight'], head['text_decoder.ln_mlp.bias'], eps=1e-5
      )
      out['token_logits'] = (
        h @ head['text_decoder.text_projection.weight'].T + head['text_decoder.text_projection.bias']
      ).numpy()
  return out


def superclip_state_dict(model, vocab: int, seed: int = 1) -> tuple[dict, dict]:
  """(the authors' SuperCLIP layout: text tower under `text.`, head `text_decoder.*`, IDF buffers; the head)."""
  g = torch.Generator().manual_seed(seed)
  width = model.visual.conv1.weight.shape[0]
  head = {
    'text_decoder.ln_mlp.weight': 1 + 0.1 * torch.randn(width, generator=g),
    'text_decoder.ln_mlp.bias': 0.1 * torch.randn(width, generator=g),
    'text_decoder.text_projection.weight': width**-0.5 * torch.randn(vocab, width, generator=g),
    'text_decoder.text_projection.bias': 0.1 * torch.randn(vocab, generator=g),
  }
  sd = {}
  for k, v in model.state_dict().items():
    sd[k if k.startswith(('visual.', 'logit_')) else 'text.' + k] = v
  sd.update(head)
  sd['cap_fq'] = torch.zeros(1, vocab, dtype=torch.float64)
  sd['num_samples'] = torch.zeros(1, 1, dtype=torch.float64)
  return sd, head
