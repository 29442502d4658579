"""Live progress: one database reader per process, fanned out to Server-Sent-Events streams.

`listening` reads the changes (one query per tick; PostgreSQL LISTEN wakes it), `encoding`
turns each into an event once, `fanout` hands it to the subscribers' bounded queues, and
`broadcaster` runs the whole (`app.state.progress_broadcaster`).
"""

from status_api.live.broadcaster import BroadcasterStats, ProgressBroadcaster, get_broadcaster
from status_api.live.encoding import ProgressChange, encode_record
from status_api.live.fanout import Subscription

__all__ = [
    "BroadcasterStats",
    "ProgressBroadcaster",
    "ProgressChange",
    "Subscription",
    "encode_record",
    "get_broadcaster",
]
