"""What the Hugging Face step's candidate peaks share: the states held throughout, what the forward keeps, the loss
term, autocast's copies, one rank's states; and the in-flight bytes a rank adds at each moment."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.components.autocast import AutocastCopies
from vramplan.estimate.components.logits import LogitsMemory
from vramplan.estimate.strategies.states import FORWARD_LAYER, FORWARD_LOGITS, LOSS_BACKWARD, RankStates


class StepParts(BaseModel):
    """The terms every candidate peak of one step draws on."""

    persistent: dict[str, int]  # weights, adapters and optimizer states: held through the whole step
    kept: int  # activations every layer keeps through the forward
    inputs: int  # token ids, labels, shifted labels and the model's masks
    hidden: int  # one residual-stream tensor
    final_norm: int  # what the final norm adds in the forward
    copies: AutocastCopies
    logits: LogitsMemory
    states: RankStates


def in_flight(states: RankStates, moment: str, bytes_: int | None = None) -> dict[str, int]:
    """Gathered parameters and communication buffers at one moment (none on a single GPU)."""
    before_reduces = states.buffers_from_backward and moment in (FORWARD_LOGITS, FORWARD_LAYER, LOSS_BACKWARD)
    buffers = 0 if before_reduces else states.comm_buffers
    extra = (states.in_flight.get(moment, 0) if bytes_ is None else bytes_) + buffers
    held = {"in_flight": extra} if extra else {}
    if states.gradient_partition and not before_reduces:
        held["gradient_partition"] = states.gradient_partition
    return held
