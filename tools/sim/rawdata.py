"""Raw tabular data for tests and benchmarks: a fleet's own CSVs, not pre-scaled arrays.

Two data sets, as a user would export them:

- :func:`sensor_readings`: synthetic readings of 8 sensors whose units differ by seven
  orders of magnitude (scales 1e-3 to 1e4, most with an offset, e.g. pressure around
  101325 Pa), three activities with string class names ``idle``, ``walking``,
  ``running``. In standardized units each class is a Gaussian blob (unit variance,
  class means drawn once from ``seed``), so a linear model separates them well, but
  only once the features are standardized: raw, one feature's gradient dwarfs the rest.
- :func:`raw_digits`: scikit-learn's 8x8 digits as they come, pixel values 0 to 16 in
  columns ``px0`` .. ``px63``, integer labels in column ``digit`` (``fedmq[sim]``).

:func:`write_fleet_csvs` holds out a stratified test split (``test_fraction``, split
seed ``seed``), splits the rest over the devices with Dirichlet(``alpha``) label skew
(:func:`tools.sim.partition.dirichlet`, ``numpy.random.default_rng(seed)``), and writes
one CSV per device plus ``test.csv``, each with a header row and the named label column.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmq.data import Dataset, load_csv
from fedmq.errors import ConfigError
from fedmq.schema import Schema, order_classes
from tools.sim.partition import dirichlet
from tools.sim.tasks import stratified_split

ACTIVITIES = ("idle", "walking", "running")
# (column, unit scale, offset): one standardized unit of each feature in its own unit.
SENSORS = (
    ("vibration_g", 1e-3, 0.0),
    ("gyro_rad_s", 1e-2, 0.05),
    ("humidity_frac", 1e-1, 0.45),
    ("temperature_c", 1.0, 21.0),
    ("heart_rate_bpm", 10.0, 80.0),
    ("sound_mpa", 1e2, 500.0),
    ("light_lux", 1e3, 2000.0),
    ("pressure_pa", 1e4, 101325.0),
)
CLASS_SPREAD = 1.2  # std of the class means, in standardized units


@dataclass(frozen=True)
class RawTable:
    """Rows of raw feature values with their label cells as they are written to CSV."""

    name: str
    features: tuple[str, ...]
    label: str
    x: np.ndarray  # float64, (n, features), raw units
    labels: np.ndarray  # (n,): str class names or int labels

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> RawTable:
        return RawTable(self.name, self.features, self.label, self.x[idx], self.labels[idx])


@dataclass(frozen=True)
class FleetCsvs:
    """The files :func:`write_fleet_csvs` wrote."""

    devices: tuple[Path, ...]
    test: Path
    schema: Schema  # its classes those of the whole table, before the split


def sensor_readings(n: int = 1500, *, seed: int = 0) -> RawTable:
    """``n`` synthetic sensor readings (see the module doc), classes drawn uniformly."""
    if n < len(ACTIVITIES):
        raise ConfigError("bad_size", f"need at least {len(ACTIVITIES)} readings, got {n}")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, CLASS_SPREAD, (len(ACTIVITIES), len(SENSORS)))
    y = rng.integers(0, len(ACTIVITIES), n)
    z = means[y] + rng.normal(0.0, 1.0, (n, len(SENSORS)))
    scale = np.array([s for _, s, _ in SENSORS])
    offset = np.array([o for _, _, o in SENSORS])
    names = tuple(name for name, _, _ in SENSORS)
    labels = np.array(ACTIVITIES, dtype=object)[y]
    return RawTable("sensors", names, "activity", offset + scale * z, labels)


def raw_digits() -> RawTable:
    """scikit-learn's digits, unscaled: pixels 0..16 in ``px0``..``px63``, label ``digit``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError(
            "missing_dependency", "raw digits need scikit-learn: pip install 'fedmq[sim]'"
        ) from exc
    bunch = load_digits()
    names = tuple(f"px{i}" for i in range(bunch.data.shape[1]))
    labels = np.asarray(bunch.target, dtype=np.int64)
    return RawTable("digits", names, "digit", np.asarray(bunch.data, np.float64), labels)


def class_indices(table: RawTable) -> np.ndarray:
    """The labels as indices into their sorted distinct values, for splitting by class."""
    _, index = np.unique(table.labels.astype(str), return_inverse=True)
    return index.astype(np.int64)


def write_csv(path: Path, table: RawTable, columns: Sequence[str] | None = None) -> Path:
    """Write ``table`` with a header row; ``columns`` orders them (default: features, then
    the label). Values are written exactly (``repr`` of the float64, ints as ints)."""
    order = list(columns) if columns is not None else [*table.features, table.label]
    position = {name: i for i, name in enumerate(table.features)}
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(order)
        for xrow, label in zip(table.x.tolist(), table.labels.tolist(), strict=True):
            writer.writerow(
                [label if c == table.label else _cell(xrow[position[c]]) for c in order]
            )
    return Path(path)


def _cell(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def write_fleet_csvs(
    directory: str | Path,
    table: RawTable,
    *,
    devices: int = 5,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    shuffle_columns: bool = False,
) -> FleetCsvs:
    """Hold out a stratified test split, split the rest over ``devices`` by Dirichlet
    (``alpha``), and write ``device-{i}.csv`` and ``test.csv`` in ``directory``
    (created). ``shuffle_columns`` gives every device file its own column order."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = stratified_split(class_indices(table), test_fraction, rng)
    train = table.take(train_idx)
    parts = dirichlet(class_indices(train), devices, alpha, rng)
    columns = [*table.features, table.label]
    paths = []
    for i, part in enumerate(parts):
        order = [str(c) for c in rng.permutation(columns)] if shuffle_columns else columns
        paths.append(write_csv(out / f"device-{i}.csv", train.take(part), order))
    test = write_csv(out / "test.csv", table.take(test_idx))
    classes = order_classes([str(c) for c in table.labels.tolist()])
    schema = Schema(table.features, table.label, "classification", classes)
    return FleetCsvs(tuple(paths), test, schema)


def _pooled(files: Path | Sequence[Path] | Dataset, schema: Schema) -> Dataset:
    if isinstance(files, Dataset):
        return files
    paths = [files] if isinstance(files, str | Path) else list(files)
    parts = [load_csv(p, schema=schema) for p in paths]
    return Dataset(np.concatenate([d.x for d in parts]), np.concatenate([d.y for d in parts]))


def centralized_logreg(
    train: Path | Sequence[Path] | Dataset,
    test: Path | Sequence[Path] | Dataset,
    schema: Schema,
    *,
    standardize: bool = True,
) -> float:
    """Test accuracy of scikit-learn's multinomial logistic regression trained in one
    place on the pooled ``train`` files (read through ``schema``), on features
    standardized with the train mean and std (``StandardScaler``) unless
    ``standardize=False``: the reference a federation on the same files is compared to."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr, te = _pooled(train, schema), _pooled(test, schema)
    model = LogisticRegression(max_iter=1000)
    pipeline = make_pipeline(StandardScaler(), model) if standardize else model
    with warnings.catch_warnings():
        # Raw features may not converge in max_iter; that is the figure being measured.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(tr.x.astype(np.float64), tr.y)
    return float(pipeline.score(te.x.astype(np.float64), te.y))
