"""The device memory around the tensors: a replay of PyTorch's CUDA caching allocator (caching.py).

Work in progress for issue 15: the simulator and its conformance tests exist; the estimate does not use it yet.
"""
