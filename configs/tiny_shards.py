r"""configs/tiny.py trained from built shards instead of synthetic batches.

  python -m superclip_jax.data.build --source 'webdataset:/data/{00000..00009}.tar' --out /data/shards
  python -m superclip_jax.main --config configs/tiny_shards.py:/data/shards --workdir /tmp/tiny_shards

The shards carry CLIP BPE ids, so the model uses the full 49,408-token vocabulary.
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  """arg: the shard directory (or comma-separated directories)."""
  c = config_defaults.sibling_config(__file__, 'tiny.py')
  c.data.kind = 'shards'
  c.data.shards = arg
  c.model.context_length = 32
  c.model.vocab_size = config_defaults.CLIP_VOCAB_SIZE
  c.tokenizer.sot_id = config_defaults.CLIP_SOT_ID
  c.tokenizer.eot_id = config_defaults.CLIP_EOT_ID
  c.data.workers = 0
  return c
