"""torchtune's activation offloading (`enable_activation_offloading`) as a CPU trace can run it.

`torchtune.training.OffloadActivations` (torchtune/training/_activation_offloading.py) needs CUDA streams. This
class keeps its bookkeeping, line for line, with the two copies replaced:

- pack: a saved tensor of at least `min_offload_size` bytes that is not a Parameter/Buffer goes to host memory.
  The host copy is not allocated here (it is not GPU memory); its bytes are added to `host_bytes`. With streams
  (the recipe's default) the GPU tensor stays referenced in `fwd_stash` until `max_fwd_stash_size` later saved
  tensors have been packed.
- unpack: a tensor still in `fwd_stash` is returned as is; otherwise the copy back to the GPU is a new tensor of
  the same size and layout, held in `bwd_tensor_stash` until the next autograd node that brings one back ends
  (or dropped as soon as its own node ends when that node kept another reference), as in the original.

The output head runs under a no-op hook (`get_act_offloading_ctx_manager`), so the logits path is not offloaded.
"""

from __future__ import annotations

import torch
from torch.autograd.graph import saved_tensors_hooks

# torchtune/training/_activation_offloading.py, OffloadActivations.__init__ defaults.
MIN_OFFLOAD_BYTES = 1024
MAX_FWD_STASH = 5


class EmulatedOffload(saved_tensors_hooks):
    """OffloadActivations(use_streams=True) without CUDA: what stays on the device, counted; the host side not."""

    def __init__(self, min_offload_size: int = MIN_OFFLOAD_BYTES, max_fwd_stash_size: int = MAX_FWD_STASH):
        self.min_bytes = min_offload_size
        self.max_stash = max_fwd_stash_size
        self.tracker: dict[int, tuple[object, bool]] = {}
        self.fwd_stash: dict[int, torch.Tensor] = {}
        self.bwd_tensor_stash: dict[int, torch.Tensor] = {}
        self.bwd_pending: set[int] = set()
        self.tensor_id = 0
        self.curr_node = None
        self.first_backward_call = True
        self.host_live_bytes = 0
        self.host_peak_bytes = 0
        super().__init__(self._pack, self._unpack)

    def _pack(self, activation: torch.Tensor) -> int:
        self.first_backward_call = True
        nbytes = activation.element_size() * activation.nelement()
        self.tensor_id += 1
        tensor_id = self.tensor_id
        if nbytes >= self.min_bytes and not isinstance(activation, (torch.nn.Parameter, torch.nn.Buffer)):
            for old in [k for k in self.fwd_stash]:
                if old <= tensor_id - self.max_stash:
                    del self.fwd_stash[old]
                else:
                    break
            layout = (tuple(activation.shape), tuple(activation.stride()), activation.dtype, _dense(activation))
            self.tracker[tensor_id] = (layout, True)
            self.fwd_stash[tensor_id] = activation
            self.host_live_bytes += nbytes
            self.host_peak_bytes = max(self.host_peak_bytes, self.host_live_bytes)
        else:
            self.tracker[tensor_id] = (activation, False)
        return tensor_id

    def _unpack(self, tensor_id: int) -> torch.Tensor:
        if self.first_backward_call:
            self.first_backward_call = False
            torch.autograd.variable.Variable._execution_engine.queue_callback(self._drop_remaining)
        held, modified = self.tracker.pop(tensor_id)
        if not modified:
            return held
        node = torch._C._current_autograd_node()
        previous: list[int] = []
        if self.curr_node is not node:
            self.curr_node = node
            previous = list(self.bwd_tensor_stash)
        shape, stride, dtype, dense = held
        self.host_live_bytes -= _numel(shape) * torch.empty((), dtype=dtype).element_size()
        from_host = tensor_id not in self.fwd_stash
        if not from_host:
            tensor = self.fwd_stash[tensor_id]
        else:
            tensor = torch.empty_strided(shape, stride, dtype=dtype) if dense else torch.empty(shape, dtype=dtype)
            self.bwd_tensor_stash[tensor_id] = tensor
            uses = torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)

        def hook(outputs, inputs):
            if from_host:
                unpacked = self.bwd_tensor_stash[tensor_id]
                if torch._C._storage_Use_Count(unpacked.untyped_storage()._cdata) > uses:
                    del self.bwd_tensor_stash[tensor_id]  # record_stream: freed with the node's own reference
            self.fwd_stash.clear()
            for old in previous:
                self.bwd_tensor_stash.pop(old, None)
            return outputs

        node.register_hook(hook)
        return tensor

    def _drop_remaining(self) -> None:
        self.bwd_tensor_stash.clear()


class NoOffload(saved_tensors_hooks):
    """torchtune's NoOpManager: the output head's saved tensors stay where they are."""

    def __init__(self) -> None:
        super().__init__(lambda tensor: tensor, lambda tensor: tensor)


def keep_output_head(model) -> list:
    """The hooks get_act_offloading_ctx_manager puts around `model.output` (TiedLinear: its inner linear)."""
    from torchtune.modules import TiedLinear

    noop = NoOffload()
    if isinstance(model.output, torch.nn.Module):
        head = model.output
    elif isinstance(model.output, TiedLinear):
        head = model.output.linear
    else:
        return []
    return [
        head.register_forward_pre_hook(lambda *args: noop.__enter__()),
        head.register_forward_hook(lambda *args: noop.__exit__(), always_call=True),
    ]


def _dense(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() or tensor.is_non_overlapping_and_dense()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
