"""The experiment identity, defined once: what makes runs one experiment (one leaderboard row) and
what makes a tuning study one (method, task) of it.

An ``Experiment`` is a frozen, typed value: suite, backbone, weights SHA-256, method and the
hyperparameters fixed for it (``--hparam``), recipe, a plugin method's provenance (its distribution
and version, or its file's SHA-256: ``methods.plugins.provenance``), and the protocol (epochs,
warm-up, batch size, trial budget, drop-path, precision, device kind). A ``Cell`` is an experiment on one task's data
(its data hash): what an Optuna study tunes and a leaderboard cell aggregates.

Serialised by one pair of functions each way, read back by the same code everywhere:
- ``Experiment.to_json`` / ``from_json``: the MLflow tag ``experiment`` of every run, and the
  ``identity`` user attribute of every study (``Cell.to_json`` / ``from_json``);
- ``Experiment.params``: the MLflow params a run logs for it (for the MLflow UI; never read back).
A study is named by a readable prefix and a short hash of its cell (``Cell.study_name``); no code
reads a name back: the study's stored identity is what is compared. Change any field and the
hash changes, so the rerun tunes anew; an identical rerun finds its study and resumes.

Fields that vary by protocol are marked ``protocol=True``: a row whose protocol differs from the
suite's main one is labelled with them (``row_labels``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from .tracking import RANDOM_INIT

HASH_CHARS = 12  # of the SHA-256 of the canonical JSON: in study names and the ``experiment_key`` tag


def _protocol(default: Any = None):
    return field(default=default, metadata={"protocol": True})


def canonical(value: dict) -> str:
    """One JSON text per value: sorted keys, no spaces; what is hashed and stored."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class Experiment:
    """One leaderboard row: runs of one experiment, whatever task or seed."""
    suite: str
    backbone: str
    weights_sha256: str  # RANDOM_INIT for a randomly initialised backbone
    method: str
    fixed: tuple[tuple[str, Any], ...] = ()  # --hparam values, sorted by name
    recipe: str = ""  # --recipe NAME: its settings decide epochs, warm-up, batch and drop-path per task
    # a plugin method's provenance ("dist==version", "file:sha256:..."; "" for a built-in): a changed
    # plugin is another experiment. Left out of the JSON while "": records older than it read back
    # as built-ins, and every built-in experiment keeps its key (its studies are found again)
    plugin: str = ""
    epochs: int | None = _protocol()  # None under a recipe (unless a smoke run's --epochs)
    warmup_epochs: int | None = _protocol()
    batch_size: int | None = _protocol()
    trials: int = _protocol(0)  # the tuning budget; 0 under a recipe
    drop_path_rate: float | None = _protocol()
    precision: str = _protocol("fp32")  # "fp32" | "bf16"
    device_kind: str = _protocol("cpu")  # "cpu" | "cuda" | "mps"

    def __post_init__(self):
        object.__setattr__(self, "fixed", tuple(sorted((str(k), v) for k, v in dict(self.fixed).items())))

    @property
    def fixed_dict(self) -> dict:
        return dict(self.fixed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fixed"] = self.fixed_dict
        for name, default in _ADDED_LATER.items():
            if out[name] == default:
                del out[name]
        return out

    def to_json(self) -> str:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, value: dict) -> "Experiment":
        """The experiment ``to_dict`` wrote; ValueError for anything else (another version's record)."""
        if not isinstance(value, dict):
            raise ValueError(f"an experiment identity is a JSON object, not {type(value).__name__}")
        names = {f.name for f in fields(cls)}
        if not names - set(_ADDED_LATER) <= set(value) <= names:
            missing, extra = sorted(names - set(value)), sorted(set(value) - names)
            raise ValueError(f"not an experiment identity of this version (missing {missing}, unknown {extra})")
        return cls(**{**_ADDED_LATER, **value, "fixed": tuple((value["fixed"] or {}).items())})

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unreadable experiment identity: {exc}") from None
        return cls.from_dict(value)

    def key(self) -> str:
        return short_hash(self.to_json())

    def params(self) -> dict:
        """What an MLflow run logs as params for its experiment (fixed values are logged with the
        fit's hyperparameters; unset protocol fields are left out)."""
        return {k: v for k, v in asdict(self).items()
                if k != "fixed" and v is not None and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}

    def on(self, task: str, data_sha256: str) -> "Cell":
        return Cell(self, task, data_sha256)


# fields added after records were written, with the value an older record means (``to_dict``
# leaves them out at that value, so the older records' keys stay the same)
_ADDED_LATER = {"plugin": ""}


@dataclass(frozen=True)
class Cell:
    """An experiment on one task's data: what one tuning study tunes and one leaderboard cell
    aggregates over seeds."""
    experiment: Experiment
    task: str
    data_sha256: str

    def to_dict(self) -> dict:
        return {"experiment": self.experiment.to_dict(), "task": self.task, "data_sha256": self.data_sha256}

    def to_json(self) -> str:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, value: dict) -> "Cell":
        if not isinstance(value, dict) or set(value) != {"experiment", "task", "data_sha256"}:
            raise ValueError("not a cell identity of this version")
        return cls(Experiment.from_dict(value["experiment"]), str(value["task"]), str(value["data_sha256"]))

    def key(self) -> str:
        return short_hash(self.to_json())

    def study_name(self) -> str:
        """The tuning study's name: readable, then the hash that makes it this cell's alone."""
        e = self.experiment
        return f"{e.suite}.{e.method}.{self.task}#{self.key()}"

    def run_key(self, seed: int, hparams: dict) -> str:
        """One final fit: this cell, its seed and every hyperparameter it trains with (a re-tune that
        picks others is another fit, and another checkpoint)."""
        return short_hash(canonical({"cell": self.to_dict(), "seed": seed, "hparams": hparams}))[:16]


PROTOCOL_FIELDS = tuple(f.name for f in fields(Experiment) if f.metadata.get("protocol"))


# --------------------------------------------------------------------------- row labels

def most_common(values: list) -> Any:
    """The value most entries share; a tie goes to the one seen last (``values`` oldest first)."""
    counts: dict = {}
    for i, v in enumerate(values):
        n, _ = counts.get(v, (0, -1))
        counts[v] = (n + 1, i)
    return max(counts, key=lambda v: counts[v])


def row_labels(experiments: Iterable[Experiment], also: Iterable[Experiment] = ()) -> dict[Experiment, str]:
    """A label per experiment, as the leaderboard names its rows: the method, then what sets the
    experiment apart from the suite's main one (per field, the value most entries share; entries
    oldest first, one per run or study): a recipe, fixed hyperparameters, protocol fields, other
    weights. E.g. 'lora', 'lora (rank=4)', 'lora (epochs=1)', 'lora (recipe rlrr-paper)'. A
    recipe's rows compare their protocol with the recipe's most common one (a smoke run's
    --epochs shows); drop-path is the recipe's per task, so it never labels a recipe row.
    ``also``: experiments to label that do not count towards the main one (e.g. of failed runs)."""
    entries = list(experiments)
    counted = set(entries)
    extra = [e for e in also if e not in counted]
    if not entries:
        entries, extra = extra, []
    if not entries:
        return {}
    plain = [e for e in entries if not e.recipe] or entries
    main = {f: most_common([getattr(e, f) for e in plain]) for f in (*PROTOCOL_FIELDS, "weights_sha256")}
    recipes = {e.recipe for e in entries}  # a recipe only failed runs have: compared with its own
    pool = entries + [e for e in extra if e.recipe not in recipes]
    per_recipe = {r: {f: most_common([getattr(e, f) for e in pool if e.recipe == r]) for f in PROTOCOL_FIELDS}
                  for r in {e.recipe for e in pool if e.recipe}}
    labels = {}
    for e in dict.fromkeys(entries + extra):
        parts = [f"recipe {e.recipe}"] if e.recipe else []
        parts += [f"{k}={v}" for k, v in e.fixed]
        ref = per_recipe[e.recipe] if e.recipe else main
        parts += [f"{f}={getattr(e, f)}" for f in PROTOCOL_FIELDS
                  if getattr(e, f) != ref[f] and not (e.recipe and f == "drop_path_rate")]
        if e.weights_sha256 == RANDOM_INIT:
            parts.append("random init")
        elif e.weights_sha256 != main["weights_sha256"]:
            parts.append(f"weights={e.weights_sha256[:8]}")
        labels[e] = e.method + (f" ({', '.join(parts)})" if parts else "")
    taken = list(labels.values())
    for e, label in labels.items():  # two experiments never share a row, even if their labels would
        if taken.count(label) > 1:
            labels[e] = f"{label} #{e.key()[:6]}"
    return labels
