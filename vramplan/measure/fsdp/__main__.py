"""`python -m vramplan.measure.fsdp ANSWER`: one FSDP trace in a fresh process (see `step.trace_fsdp_step`)."""

import sys

from vramplan.measure.fsdp.step import answer_request

answer_request(sys.argv[1])
