"""An in-process discrete-event simulation of a fleet, on a virtual clock.

No sleeping and no network: each device's local run takes a virtual duration drawn
from its delay model, and events are processed in time order. Everything else is the
daemon's own: each update is encoded with the wire codec in the fleet's ``encoding``
and goes through ``aggregator.intake.Intake`` (validator, defences, strategy,
counters), and rounds close by ``aggregator.deadline``. The same seed gives the same
result.

Device behaviour mirrors the edge agent: a device trains on a version it has not
trained on yet; when it finishes and no newer version exists, it waits for one.
Synchronous FedAvg instead starts a round by sampling idle devices and closes it when
all selected devices reported or the round deadline passed.

A fraction of the devices can be malicious (``tools.sim.attacks.ATTACKS``); the strategy
is wrapped in its defences (``aggregator.strategies.robust``) unless ``defence=False``.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig, StrategyConfig
from aggregator.deadline import Deadline
from aggregator.intake import Intake
from aggregator.strategies import Strategy, make_strategy
from fedmq.encodings import parse_encoding
from fedmq.errors import ConfigError, WireError
from fedmq.feedback import ErrorFeedback
from fedmq.model import Weights, accuracy, init_weights, loss
from fedmq.topics import Topics
from fedmq.training import train_local
from fedmq.wire import Update
from tools.sim.attacks import (
    ATTACKS,
    SIGNFLIP_SCALE,
    attack_update,
    pick_malicious,
    poison_nan,
    ride,
)
from tools.sim.delays import DelayModel
from tools.sim.partition import partition
from tools.sim.result import SimResult, poison_tolerant, sim_hyper
from tools.sim.tasks import load_task

# The intake's rejection warnings are the daemon's; a simulation reports its counts.
log = logging.getLogger("fedmq.sim")
log.addHandler(logging.NullHandler())

# Each run's duration is the device's own delay times this much lognormal jitter,
# so devices keep their speed ranking without moving in lockstep.
RUN_JITTER_SIGMA = 0.1


@dataclass(frozen=True)
class SimConfig:
    task: str = "digits"
    devices: int = 20
    partition: str = "iid"
    delays: str = "lognormal:0.05,1.0"
    strategy: str = StrategyConfig.strategy
    strategy_params: dict[str, Any] = field(default_factory=dict)
    hyper: dict[str, Any] = field(default_factory=dict)  # overrides of the task's defaults
    seed: int = 0
    target: float = 0.90
    budget: float = 30.0  # virtual seconds
    round_deadline: float | None = None  # FedAvg only; None waits for every selected device
    eval_interval: float = 0.05  # evaluate at most this often (virtual seconds)
    until_target: bool = False
    malicious: float = 0.0  # fraction of devices, chosen by seed, that send attacks
    attack: str = "signflip"
    defence: bool = StrategyConfig.defence  # wrap it in its defences (strategies.robust)
    encoding: str = "f32"  # how devices put their deltas on the wire: f32 | f16 | q8 | topk:F
    error_feedback: bool = True  # each device carries what its encoding lost (fedmq.feedback)
    dp_delta: float = AggregatorConfig.dp_delta  # ε is for this δ (with hyper dp_noise > 0)

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError("bad_devices", "--devices must be at least 1")
        if not self.budget > 0:
            raise ConfigError("bad_budget", "--budget must be a positive number of seconds")
        if self.round_deadline is not None and not self.round_deadline > 0:
            raise ConfigError("bad_deadline", "--round-deadline must be positive")
        if not 0.0 <= self.malicious <= 1.0:  # also refuses NaN
            raise ConfigError("bad_malicious", f"--malicious must be in [0, 1]: {self.malicious}")
        if self.attack not in ATTACKS:
            raise ConfigError(
                "bad_attack", f"unknown attack {self.attack!r}: use one of {', '.join(ATTACKS)}"
            )
        parse_encoding(self.encoding, "--encoding")
        if not 0 < self.dp_delta < 1:  # also refuses NaN
            raise ConfigError("bad_setting", f"--dp-delta must be in (0, 1), got {self.dp_delta}")


@dataclass
class _Device:
    index: int
    x: np.ndarray
    y: np.ndarray
    delay: float
    rng: np.random.Generator
    feedback: ErrorFeedback
    trained_on: int = -1
    busy: bool = False
    malicious: bool = False
    seq: int = 0
    attack_scale: float = SIGNFLIP_SCALE  # ridebound's, learned from its refusals

    @property
    def name(self) -> str:
        return f"sim-{self.index:04d}"


Progress = Callable[[float, int, float], None]


def fleet_params(strategy: str, devices: int, given: dict[str, Any]) -> dict[str, Any]:
    """The strategy parameters for a fleet of ``devices``: ``given``, then fleet defaults.

    FedAvg hears every device each round; FedBuff's buffer is at most the fleet, since
    each device sends one update per version and a larger buffer would never fill.
    """
    params = dict(given)
    if strategy == "fedavg":
        params.setdefault("clients_per_round", devices)
    elif strategy == "fedbuff":
        params.setdefault("k", min(StrategyConfig.k, devices))
    return params


class _Simulation:
    def __init__(self, cfg: SimConfig, progress: Progress | None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.task = load_task(cfg.task, seed=cfg.seed)
        if not self.task.arch.is_classifier and cfg.partition != "iid":
            raise ConfigError("bad_partition", "a regression task can only be split iid")
        if not self.task.arch.is_classifier and cfg.malicious > 0 and cfg.attack == "labelflip":
            raise ConfigError("bad_attack", "labelflip needs a classification task")
        rng = np.random.default_rng(cfg.seed)
        self.hyper = sim_hyper(self.task, cfg)
        delays = DelayModel.parse(cfg.delays).per_device(cfg.devices, rng)
        parts = partition(cfg.partition, self.task.train.y, cfg.devices, rng)
        train, ef = self.task.train, cfg.error_feedback  # one residual per device
        self.devices = [
            _Device(i, train.x[idx], train.y[idx], float(delays[i]), r, ErrorFeedback(ef))
            for i, (idx, r) in enumerate(zip(parts, rng.spawn(cfg.devices), strict=True))
        ]
        for i in pick_malicious(cfg.devices, cfg.malicious, cfg.seed):
            self.devices[i].malicious = True
        self.rng = rng
        strategy = make_strategy(
            cfg.strategy,
            init_weights(self.task.arch, cfg.seed),
            0,
            defence=cfg.defence,
            **fleet_params(cfg.strategy, cfg.devices, cfg.strategy_params),
        )
        self.topics = Topics("sim")
        # The devices apply the DP policy in train_local, as agents do; the Intake
        # accounts for it and bounds norms by it, as the daemon's does.
        self.intake = Intake(
            self.topics, self.task.arch, strategy, log=log, dp_clip=self.hyper.dp_clip,
            noise=self.hyper.dp_noise, dp_delta=cfg.dp_delta,
        )  # fmt: skip
        self.sync = cfg.strategy == "fedavg"
        self.deadline = Deadline(cfg.round_deadline if self.sync else None, 0.0)
        self.events: list[tuple[float, int, str, int, Any]] = []
        self._tick = 0
        self.now = 0.0
        self.malicious_applied = 0
        self.malicious_rejected: Counter = Counter()
        self.history: list[tuple[float, int, float]] = []
        self.time_to_target: float | None = None
        self.last_eval = -math.inf

    @property
    def strategy(self) -> Strategy:
        return self.intake.strategy

    def _push(self, t: float, kind: str, device: int, payload: Any) -> None:
        self._tick += 1
        heapq.heappush(self.events, (t, self._tick, kind, device, payload))

    def _start(self, dev: _Device) -> None:
        version = self.strategy.version
        base = self.strategy.weights
        dev.busy, dev.trained_on = True, version
        duration = dev.delay * math.exp(RUN_JITTER_SIGMA * dev.rng.standard_normal())
        self._push(self.now + duration, "done", dev.index, (version, base))

    def _start_round(self) -> None:
        idle = [d for d in self.devices if not d.busy]
        want = min(self.strategy.params()["clients_per_round"], len(idle))
        chosen = self.rng.choice(len(idle), size=want, replace=False) if want else []
        for i in sorted(chosen):
            self._start(idle[i])
        due = self.deadline.due_at
        if due is not None:
            self._push(due, "deadline", -1, None)

    def _evaluate(self, force: bool = False) -> None:
        if not force and self.now - self.last_eval < self.cfg.eval_interval:
            return
        self.last_eval = self.now
        task, w = self.task, self.strategy.weights
        if task.arch.is_classifier:
            metric = accuracy(task.arch, w, task.test.x, task.test.y)
            if self.time_to_target is None and metric >= self.cfg.target:
                self.time_to_target = self.now
        else:
            metric = loss(task.arch, w, task.test.x, task.test.y)
        self.history.append((self.now, self.strategy.version, metric))
        if self.progress:
            self.progress(self.now, self.strategy.version, metric)

    def _new_version(self) -> None:
        self.deadline.versioned(self.now)
        self._evaluate()
        if self.sync:
            self._start_round()
            return
        for dev in self.devices:
            if not dev.busy:
                self._start(dev)

    def _finish(self, dev: _Device, base_version: int, base: dict[str, np.ndarray]) -> None:
        dev.busy = False
        payload = self._payload(dev, base_version, base)
        if payload is not None:
            outcome = self.intake.handle(self.topics.update(dev.name), payload)
            if dev.malicious:
                self.malicious_applied += outcome.applied
                if outcome.reason is not None:
                    self.malicious_rejected[outcome.reason] += 1
                if self.cfg.attack == "ridebound":
                    dev.attack_scale = ride(dev.attack_scale, outcome.reason == "norm_bound")
            if outcome.new_version:
                self._new_version()
                return
        if not self.sync and self.strategy.version > dev.trained_on:
            self._start(dev)
        elif self._stalled():
            # Refused updates can leave a FedBuff buffer short of K, or a FedAvg round short
            # of its devices, with every device waiting for a new version. The service's
            # round deadline would close it; nothing else can arrive, so close it now.
            if self.intake.flush().new_version:
                self._new_version()
            elif self.sync:
                self._start_round()

    def _payload(self, dev: _Device, base_version: int, base: Weights) -> bytes | None:
        """The bytes device ``dev`` publishes: its update in the fleet's encoding.

        None when an honest delta does not fit the encoding (a diverged model's, past
        f16's range): the agent reports that and sends nothing.
        """
        arch, hyper = self.task.arch, self.hyper
        if dev.malicious:
            delta = attack_update(
                self.cfg.attack, arch, base, dev.x, dev.y, hyper, dev.rng, dev.attack_scale
            )
            steps = 0
        else:
            delta, stats = train_local(arch, base, dev.x, dev.y, hyper, dev.rng)
            steps = stats.steps
        nan = dev.malicious and self.cfg.attack == "nan"
        fields = dict(
            device=dev.name, seq=dev.seq, base_version=base_version,
            num_samples=len(dev.x), steps=steps, loss=None,
        )  # fmt: skip
        dev.seq += 1
        try:
            update = dev.feedback.encode(
                {k: np.zeros_like(v) for k, v in delta.items()} if nan else delta,
                encoding=self.cfg.encoding,
                bounded=hyper.dp_clip > 0,  # as the agent does: the aggregator's DP norm bound
                **fields,
            )
        except WireError:
            if not dev.malicious:
                return None
            # An attack past f16's range (an undefended model diverging): an attacker is
            # not bound by the fleet's encoding, so it sends the delta as f32, or past
            # f32's as the non-finite bytes it has become.
            zero = {k: np.zeros_like(v) for k, v in delta.items()}
            finite = all(np.isfinite(v).all() for v in delta.values())
            update = Update.from_delta(delta if finite else zero, encoding="f32", **fields)
            nan = not finite
        return (poison_nan(update) if nan else update).encode()

    def _stalled(self) -> bool:
        """No device is training and no round deadline will fire (clean runs never stall)."""
        if self.sync and self.cfg.round_deadline is not None:
            return False
        return not any(d.busy for d in self.devices)

    def run(self) -> SimResult:
        with poison_tolerant(self.cfg):
            return self._run()

    def _run(self) -> SimResult:
        started = time.perf_counter()
        self._evaluate(force=True)
        if self.sync:
            self._start_round()
        else:
            for dev in self.devices:
                self._start(dev)
        while self.events and self.events[0][0] <= self.cfg.budget:
            self.now, _, kind, index, payload = heapq.heappop(self.events)
            if kind == "done":
                self._finish(self.devices[index], *payload)
            elif kind == "deadline" and self.deadline.expired(self.now):
                # A round nobody finished in time is simply started again.
                if self.deadline.fire(self.now, lambda: self.intake.flush().new_version):
                    self._new_version()
                else:
                    self._start_round()
            if self.cfg.until_target and self.time_to_target is not None:
                break
        self._evaluate(force=True)
        privacy = self.intake.privacy
        return SimResult(
            config=self.cfg,
            task=self.task,
            versions=self.strategy.version,
            updates_applied=self.intake.counters.accepted,
            rejected=self.intake.counters.rejected,
            virtual_time_s=self.now,
            time_to_target_s=self.time_to_target,
            history=self.history,
            weights=self.strategy.weights,
            strategy_params=self.strategy.params(),
            wall_s=time.perf_counter() - started,
            malicious_devices=sum(d.malicious for d in self.devices),
            malicious_applied=self.malicious_applied,
            malicious_rejected=self.malicious_rejected,
            epsilon=self.intake.snapshot().epsilon,
            device_epsilons={}
            if privacy is None
            else {d.name: e for d in self.devices if (e := privacy.epsilon(d.name)) is not None},
            bytes_in=self.intake.counters.bytes_in,
        )


def simulate(cfg: SimConfig, progress: Progress | None = None) -> SimResult:
    """Run one simulation to its virtual-time budget (or its target, if asked)."""
    return _Simulation(cfg, progress).run()
