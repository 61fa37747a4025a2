"""fedmq/__init__.py: the contract, deliberately, and nothing heavy behind it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types

import fedmq

# What a device (fedmq[agent]) lacks or must not pay for at import.
HEAVY = ("onnx", "onnxruntime", "sklearn", "scipy", "typer", "rich", "cryptography")
MQTT = ("paho", "aiomqtt")
CONTRACT = {"fedmq._version", "fedmq.errors", "fedmq.model", "fedmq.topics", "fedmq.training"}
# Hyper is declared with fedmq.settings, the one source of every setting.
CONTRACT |= {"fedmq.wire", "fedmq.envelope", "fedmq.fields", "fedmq.tensors", "fedmq.settings"}
# The messages kept in modules of their own; a model's arch may carry the fleet's data
# schema (docs/wire.md 3.2), and the wire carries feature statistics and the
# standardization (both NumPy only).
CONTRACT |= {"fedmq.history", "fedmq.schema", "fedmq.featurestats", "fedmq.preprocess"}
# How an update's delta is encoded (f32, f16, q8, topk) is the wire's, in its own module.
CONTRACT |= {"fedmq.encodings"}


def test_import_fedmq_loads_only_the_contract():
    code = (
        "import json, sys, fedmq\n"
        "print(json.dumps(sorted({m for m in sys.modules if m.split('.')[0] in "
        f"{(*HEAVY, *MQTT, 'fedmq')!r}}})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert {m.split(".")[0] for m in loaded} & {*HEAVY, *MQTT} == set()
    assert loaded - {"fedmq"} == CONTRACT


def test_all_is_exactly_the_public_names_and_each_comes_from_the_contract():
    public = {  # submodules are attributes too, once imported
        name
        for name, value in vars(fedmq).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(fedmq.__all__) - {"__version__"} == public
    assert len(fedmq.__all__) == len(set(fedmq.__all__))
    for name in fedmq.__all__:
        value = getattr(fedmq, name)
        if isinstance(value, type) or inspect.isfunction(value):  # not Weights, an alias
            assert value.__module__ in CONTRACT, (name, value.__module__)


def test_the_contract_round_trips_through_the_front():
    arch = fedmq.Arch("linear", (2, 1))
    weights = fedmq.init_weights(arch, seed=0)
    fedmq.check_weights(arch, weights)
    assert fedmq.Topics("lab").update("pi-1") == "fl/lab/updates/pi-1"
    assert issubclass(fedmq.WireError, fedmq.FedmqError)
    assert fedmq.__version__
