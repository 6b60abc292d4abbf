"""Flax NNX towers and token classifier."""
