"""Reproductions of the paper's claims in miniature."""
