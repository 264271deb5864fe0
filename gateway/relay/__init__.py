"""Moving a chat completion from the upstream to the client, metered: :mod:`.stream`
(SSE, event by event), :mod:`.complete` (one JSON answer), :mod:`.meter` (the running
estimate against the hold), :mod:`.idle` (idle deadlines), :mod:`.outcome` (what the
request cost and how it went, for settlement)."""

from gateway.relay.complete import complete
from gateway.relay.meter import End, Meter
from gateway.relay.outcome import Outcome
from gateway.relay.stream import Relay, StreamJob, Tail, generation_id_of

__all__ = ["End", "Meter", "Outcome", "Relay", "StreamJob", "Tail", "complete",
           "generation_id_of"]
