"""Weights in and out: OpenAI / OpenCLIP / SuperCLIP PyTorch checkpoints and HF CLIPModel directories."""
