"""The CLIP tokenizer gives OpenAI's ids; HF tokenizer.json files and trained BPEs load."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = json.load(open(os.path.join(ROOT, 'tests', 'data', 'clip_reference_ids.json'), encoding='utf-8'))


@pytest.fixture(scope='module')
def clip():
  # First use fetches the vocabulary from the open-clip-torch wheel through pip when not cached.
  return tokenizer_lib.load_tokenizer('clip')


@pytest.mark.parametrize('i', range(len(REFERENCE['cases'])))
def test_ids_equal_openai_clip(clip, i):
  case = REFERENCE['cases'][i]
  expected = case['ids'] + [0] * (77 - len(case['ids']))
  assert clip(case['text'])[0].tolist() == expected, case['text']


def test_special_ids_and_truncation_keep_eot_last(clip):
  assert (clip.sot_id, clip.eot_id, clip.pad_id, clip.vocab_size) == (49406, 49407, 0, 49408)
  ids = clip('word ' * 200)[0]
  assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407 and 0 not in ids
  short = clip(['a cat', 'a dog'], context_length=8)
  assert short.shape == (2, 8) and short.dtype == np.int32


def test_decode_round_trip(clip):
  assert clip.decode(clip('A Photo of a CAT!')[0]).strip() == 'a photo of a cat !'


def test_train_bpe_and_load_tokenizer_json(tmp_path):
  captions = tmp_path / 'captions.txt'
  words = ['red', 'green', 'blue', 'square', 'circle', 'photo', 'of', 'a']
  rng = np.random.default_rng(0)
  captions.write_text('\n'.join(' '.join(rng.choice(words, 5)) for _ in range(300)))
  out = tmp_path / 'tok.json'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.data.tokenizer',
      'train',
      '--captions',
      str(captions),
      '--vocab_size',
      '300',
      '--out',
      str(out),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  tok = tokenizer_lib.load_tokenizer(str(out), context_length=12)
  assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2) == (info['pad_id'], info['sot_id'], info['eot_id'])
  ids = tok('A Photo of a RED square')[0]
  assert ids[0] == tok.sot_id and tok.eot_id in ids
  assert tok.decode(ids).replace(' ', '') == 'aphotoofaredsquare'
  # Whole words of the training captions became single tokens.
  assert len(tok.encode('photo')) == 1


def test_missing_files_are_clear_errors(tmp_path):
  with pytest.raises(UserError, match='nothing.json'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'nothing.json'))
  with pytest.raises(UserError, match='merges'):
    tokenizer_lib.load_tokenizer('clip:' + str(tmp_path / 'merges.txt.gz'))
