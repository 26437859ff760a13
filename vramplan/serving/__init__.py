"""Serving memory: how many sequences of a context vLLM holds on a GPU (weights, KV cache, vLLM's budget rule)."""
