"""Naive pure-PyTorch oracles of every fastadv op."""
