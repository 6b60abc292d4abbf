"""Data: synthetic image-text batches (until shards exist), tokenizer, records, pipeline."""
