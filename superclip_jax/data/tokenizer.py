"""Tokenizers: OpenAI CLIP's BPE with identical ids, any HF tokenizer.json, or a BPE trained here.

The BPE itself runs in HF `tokenizers` (Rust): the CLIP merges are loaded into a
`tokenizers.models.BPE` with CLIP's pre-tokenisation regex and byte-to-unicode map, and
text is cleaned exactly as OpenAI's `SimpleTokenizer` does (ftfy, double HTML unescape,
whitespace collapse, lower-case) before it. Ids equal OpenAI's for the same text.

The merges file ships in the open-clip-torch wheel. It is found, in order, at a given
path, inside an installed `open_clip` package, or in a cache that
`python -m superclip_jax.data.tokenizer fetch` (or the first use) fills by asking pip for
that wheel alone (no dependencies, no other network access) and extracting the file with
its licence notice.

  python -m superclip_jax.data.tokenizer fetch
  python -m superclip_jax.data.tokenizer encode "a photo of a cat"
  python -m superclip_jax.data.tokenizer train --captions FILE --vocab_size N --out tokenizer.json
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import json
import os
from typing import Iterable, Sequence

import numpy as np
from absl import flags

from superclip_jax.data import records, wheel_files
from superclip_jax.errors import UserError

CLIP_MERGES_NAME = 'bpe_simple_vocab_16e6.txt.gz'
CLIP_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SOT_TOKEN, EOT_TOKEN = '<start_of_text>', '<end_of_text>'
TRAINED_PAD_TOKEN = '<pad>'


def fetch_clip_merges() -> str:
  """Cache the CLIP merges from the open-clip-torch wheel (with its licence notice)."""
  dest = os.path.join(wheel_files.cache_dir(), 'open-clip-torch')
  return wheel_files.fetch('open-clip-torch', [CLIP_MERGES_NAME], dest)[CLIP_MERGES_NAME]


def find_clip_merges(path: str = '', fetch: bool = True) -> str:
  """The CLIP merges file: explicit path, installed open_clip, cache, else fetched (and said so)."""
  if path:
    if not os.path.exists(path):
      raise UserError(f'CLIP BPE merges file {path} not found')
    return path
  return wheel_files.find('open-clip-torch', 'open_clip', CLIP_MERGES_NAME, fetch_missing=fetch)


@functools.lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[int, str]:
  # GPT-2 / CLIP: printable bytes map to themselves, the rest to code points from 256 up.
  bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def clean_text(text: str) -> str:
  """OpenAI CLIP's cleaning: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
  import ftfy

  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return ' '.join(text.split()).lower()


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


class Tokenizer:
  """Text -> int32 ids with SOT/EOT, padded to a context length; truncation keeps EOT last."""

  def __init__(
    self, hf_tokenizer, *, sot_id: int, eot_id: int, pad_id: int, identity: dict, clip_cleaning: bool, context_length: int = 77
  ):
    self._tok = hf_tokenizer
    self.sot_id, self.eot_id, self.pad_id = sot_id, eot_id, pad_id
    self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
    self.identity = identity
    self.clip_cleaning = clip_cleaning
    self.context_length = context_length

  def encode(self, text: str) -> list[int]:
    """Ids of the text alone (no SOT/EOT)."""
    if self.clip_cleaning:
      text = clean_text(text)
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if self.clip_cleaning:
      texts = [clean_text(t) for t in texts]
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def with_specials(self, ids: Sequence[int], max_length: int) -> list[int]:
    """[SOT] + ids + [EOT], truncated to max_length with EOT kept last (OpenCLIP's rule)."""
    return [self.sot_id, *list(ids)[: max_length - 2], self.eot_id]

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    """int32 (N, context_length), as open_clip.tokenize."""
    if isinstance(texts, str):
      texts = [texts]
    length = context_length or self.context_length
    return np.stack(
      [
        records.fit_ids(self.with_specials(ids, length), length, eot_id=self.eot_id, pad_id=self.pad_id)
        for ids in self.encode_batch(texts)
      ]
    )

  def decode(self, ids: Iterable[int]) -> str:
    special = {self.sot_id, self.eot_id, self.pad_id}
    return self._tok.decode([int(i) for i in ids if int(i) not in special], skip_special_tokens=True)


def _clip_pre_tokenizer():
  from tokenizers import Regex, pre_tokenizers

  return pre_tokenizers.Sequence(
    [
      # Keep the regex matches, drop what lies between them (whitespace), as re.findall does.
      pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior='removed', invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )


@functools.lru_cache(maxsize=4)
def clip_tokenizer(merges_path: str = '', context_length: int = 77) -> Tokenizer:
  """OpenAI CLIP's BPE (vocabulary 49,408; SOT 49406, EOT 49407, pad 0)."""
  from tokenizers import AddedToken, decoders, models
  from tokenizers import Tokenizer as HFTokenizer

  path = find_clip_merges(merges_path)
  lines = gzip.open(path).read().decode('utf-8').split('\n')
  merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
  symbols = list(_bytes_to_unicode().values())
  vocab_list = symbols + [s + '</w>' for s in symbols] + [''.join(m) for m in merges]
  vocab = {tok: i for i, tok in enumerate(vocab_list)}
  bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix='</w>', fuse_unk=False)
  tok = HFTokenizer(bpe)
  tok.pre_tokenizer = _clip_pre_tokenizer()
  tok.decoder = decoders.BPEDecoder(suffix='</w>')
  tok.add_special_tokens([AddedToken(SOT_TOKEN, normalized=False), AddedToken(EOT_TOKEN, normalized=False)])
  sot, eot = tok.token_to_id(SOT_TOKEN), tok.token_to_id(EOT_TOKEN)
  assert (sot, eot) == (49406, 49407), (sot, eot)
  identity = {'kind': 'clip_bpe', 'merges_sha256': _file_sha256(path), 'vocab_size': 49408}
  return Tokenizer(tok, sot_id=sot, eot_id=eot, pad_id=0, identity=identity, clip_cleaning=True, context_length=context_length)


def hf_tokenizer(
  path: str, *, sot_token: str = '', eot_token: str = '', pad_token: str = '', context_length: int = 77
) -> Tokenizer:
  """Any HF tokenizer.json; SOT/EOT/pad found by name (CLIP, BERT and our trained conventions)."""
  from tokenizers import Tokenizer as HFTokenizer

  if not os.path.exists(path):
    raise UserError(f'tokenizer file {path} not found')
  tok = HFTokenizer.from_file(path)

  def find(explicit, candidates, what):
    for name in ([explicit] if explicit else []) + candidates:
      i = tok.token_to_id(name)
      if i is not None:
        return i
    raise UserError(f'{path}: no {what} token among {[explicit] if explicit else candidates}')

  sot = find(sot_token, [SOT_TOKEN, '<|startoftext|>', '[CLS]', '<s>', '<bos>'], 'start-of-text')
  eot = find(eot_token, [EOT_TOKEN, '<|endoftext|>', '[SEP]', '</s>', '<eos>'], 'end-of-text')
  pad = (
    find(pad_token, [TRAINED_PAD_TOKEN, '[PAD]', '<|endoftext|>'], 'padding')
    if (pad_token or any(tok.token_to_id(t) is not None for t in (TRAINED_PAD_TOKEN, '[PAD]')))
    else 0
  )
  identity = {
    'kind': 'hf',
    'file': os.path.basename(path),
    'sha256': _file_sha256(path),
    'vocab_size': tok.get_vocab_size(with_added_tokens=True),
  }
  return Tokenizer(tok, sot_id=sot, eot_id=eot, pad_id=pad, identity=identity, clip_cleaning=False, context_length=context_length)


def load_tokenizer(spec: str = 'clip', context_length: int = 77) -> Tokenizer:
  """'clip' (default), 'clip:/path/to/merges.txt.gz', or a path to a tokenizer.json."""
  if spec in ('', 'clip'):
    return clip_tokenizer('', context_length)
  if spec.startswith('clip:'):
    return clip_tokenizer(spec[len('clip:') :], context_length)
  return hf_tokenizer(spec[len('hf:') :] if spec.startswith('hf:') else spec, context_length=context_length)


def train_bpe(captions: Iterable[str], vocab_size: int, out_path: str) -> Tokenizer:
  """Train a byte-level BPE on the user's captions with CLIP's cleaning and pre-tokenisation.

  Id 0 is '<pad>' (so padding never collides with a real token), then the start and end
  tokens; the file records the cleaning as a lower-casing, whitespace-collapsing normaliser.
  """
  from tokenizers import Regex, decoders, models, normalizers, trainers
  from tokenizers import Tokenizer as HFTokenizer

  tok = HFTokenizer(models.BPE(end_of_word_suffix='</w>'))
  tok.normalizer = normalizers.Sequence(
    [normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Strip(), normalizers.Lowercase()]
  )
  tok.pre_tokenizer = _clip_pre_tokenizer()
  tok.decoder = decoders.BPEDecoder(suffix='</w>')
  from tokenizers import pre_tokenizers

  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[TRAINED_PAD_TOKEN, SOT_TOKEN, EOT_TOKEN],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    end_of_word_suffix='</w>',
    show_progress=False,
  )
  tok.train_from_iterator(captions, trainer=trainer)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tok.save(out_path)
  return hf_tokenizer(out_path)


_COMMAND_FLAGS = {'fetch': (), 'encode': ('tokenizer', 'context_length'), 'train': ('captions', 'vocab_size', 'out')}


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('tokenizer', 'clip', "encode: 'clip', a tokenizer.json path or an HF tokenizer name.", flag_values=v)
  flags.DEFINE_integer('context_length', 77, 'encode: pad or truncate the ids to this length.', flag_values=v)
  flags.DEFINE_string('captions', None, 'train (required): a captions file, one caption per line.', flag_values=v)
  flags.DEFINE_integer('vocab_size', None, 'train (required): the vocabulary size.', flag_values=v)
  flags.DEFINE_string('out', None, 'train (required): where tokenizer.json goes.', flag_values=v)


def _tokenizer_command(v: flags.FlagValues, args: list[str]) -> None:
  from superclip_jax.errors import user_errors

  with user_errors('superclip_jax.data.tokenizer'):
    command, texts = (args[0], args[1:]) if args else ('', [])
    if command not in _COMMAND_FLAGS:
      raise UserError('give a command: fetch, encode TEXT [TEXT ...] or train' + (f' (not {command!r})' if command else ''))
    misplaced = [
      f'--{name}' for name in sum(_COMMAND_FLAGS.values(), ()) if v[name].present and name not in _COMMAND_FLAGS[command]
    ]
    if misplaced:
      raise UserError(f'{command} does not take {", ".join(misplaced)}')
    if command == 'fetch':
      if texts:
        raise UserError(f'fetch takes no arguments, got {texts}')
      print(fetch_clip_merges())
    elif command == 'encode':
      if not texts:
        raise UserError('encode: give the texts to encode')
      tok = load_tokenizer(v.tokenizer, v.context_length)
      for text, row in zip(texts, tok(texts)):
        print(json.dumps({'text': text, 'ids': row.tolist()}))
    else:
      missing = [f'--{name}' for name in _COMMAND_FLAGS['train'] if v[name].value is None]
      if missing or texts:
        raise UserError(f'train needs {", ".join(missing)}' if missing else f'train takes no arguments, got {texts}')
      if not os.path.isfile(v.captions):
        raise UserError(f'--captions {v.captions}: no such file')
      with open(v.captions, encoding='utf-8') as f:
        tok = train_bpe((line.strip() for line in f if line.strip()), v.vocab_size, v.out)
      print(
        json.dumps({'out': v.out, 'vocab_size': tok.vocab_size, 'sot_id': tok.sot_id, 'eot_id': tok.eot_id, 'pad_id': tok.pad_id})
      )


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.data.tokenizer COMMAND` (argv None), or its arguments as a list, in this process."""
  from superclip_jax import commands

  commands.command('superclip_jax.data.tokenizer', _define_flags, _tokenizer_command, argv, positional=True)


if __name__ == '__main__':
  main()
