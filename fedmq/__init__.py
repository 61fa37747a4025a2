"""fedmq's shared contract: what the agent, the aggregator and any third client agree on.

The wire messages (msgpack, see docs/wire.md), the MQTT topic names of a fleet, the
model (architecture and weights) and the errors. It needs NumPy and msgpack only: a
device imports it, so nothing here may pull in ONNX, MQTT clients or the CLI.
Everything else (data files, training, ONNX export, settings) is imported from its
module, e.g. ``fedmq.data``.
"""

from fedmq._version import __version__
from fedmq.errors import (
    BrokerError,
    ConfigError,
    DataError,
    FedmqError,
    ModelError,
    TopicError,
    UpdateRejected,
    WireError,
)
from fedmq.model import Arch, Weights, check_weights, forward, init_weights, predict
from fedmq.topics import Topics, validate_device_id, validate_fleet
from fedmq.training import Hyper
from fedmq.wire import (
    AggregatorStatus,
    DeviceLedger,
    DeviceStatus,
    GlobalModel,
    Message,
    Update,
)

__all__ = [
    "AggregatorStatus",
    "Arch",
    "BrokerError",
    "ConfigError",
    "DataError",
    "DeviceLedger",
    "DeviceStatus",
    "FedmqError",
    "GlobalModel",
    "Hyper",
    "Message",
    "ModelError",
    "TopicError",
    "Topics",
    "Update",
    "UpdateRejected",
    "Weights",
    "WireError",
    "__version__",
    "check_weights",
    "forward",
    "init_weights",
    "predict",
    "validate_device_id",
    "validate_fleet",
]
