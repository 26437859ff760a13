"""The device memory around the tensors: PyTorch's CUDA caching allocator replayed.

- caching.py: the allocator's rules (pools per stream, rounding, segments, best fit, splitting, merging,
  max_split_size, roundup_power2_divisions, expandable segments, garbage collection, release and retry before OOM),
  `replay` of an allocation stream and `replay_steady_step` of a traced step;
- config.py: PYTORCH_ALLOC_CONF / --alloc-conf parsed as torch parses it;
- snapshot.py: a GPU's recorded allocator history (torch.cuda.memory._snapshot) replayed and compared.
The estimate's closed-form reserve (estimate/runtime.py) is derived from replays of the matrix's traced steps;
`trace` carries the replay of its own step and `check --exact` replays it at each GPU's capacity.
"""
