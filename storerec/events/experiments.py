"""A/B experiments: configuration, deterministic sticky assignment, targeting.

An experiments file (TOML, ``experiments.file``; every option in ``configs/experiments.example.toml``)
lists experiments::

    [[experiment]]
    name = "als-vs-popularity"
    salt = "2026-11-als-vs-pop"          # changing the salt reshuffles users
    start = 2026-11-01T00:00:00Z          # optional; outside [start, stop) the default serves
    stop = 2026-12-01T00:00:00Z
    targeting = { segments = ["active", "dormant"], tiers = [] }   # optional; empty = everyone

    [[experiment.variant]]
    name = "control"                      # the first variant is the control
    model = "champion"                    # alias or version number in the registry
    share = 0.5

    [[experiment.variant]]
    name = "treatment"
    model = "challenger"
    share = 0.5
    diversity_strength = 0.5              # optional ranking settings for this variant

Assignment: ``bucket = sha256(salt + ":" + unit) / 2**64`` in [0, 1), compared against the
cumulative shares; the unit is the user id, or the session id of an anonymous shopper. The same
unit always lands in the same variant, in every worker and after every restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from storerec.core.config import ConfigModel, read_toml, validate_config

EXAMPLE_FILE = "configs/experiments.example.toml"


class VariantConfig(ConfigModel):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    model: str = Field(..., min_length=1, description="Registered version: alias (champion) or number.")
    share: float = Field(..., gt=0, le=1, description="Share of the experiment's traffic.")
    diversity_strength: float | None = Field(None, ge=0, le=1, description="Default MMR strength for this variant.")
    max_per_category: int | None = Field(None, ge=1, le=100, description="Default category cap for this variant.")


class Targeting(ConfigModel):
    segments: list[str] = Field(default_factory=list, description="Lifecycle segments included (empty = all).")
    tiers: list[str] = Field(default_factory=list, description="Membership tiers included (empty = all).")


class ExperimentConfig(ConfigModel):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    salt: str = Field(..., min_length=1)
    variants: list[VariantConfig] = Field(..., alias="variant", min_length=2)
    start: datetime | None = Field(None, strict=False, description="Start of the window (UTC unless it names a zone).")
    stop: datetime | None = Field(None, strict=False, description="End of the window (excluded).")
    targeting: Targeting = Field(default_factory=Targeting)
    description: str = ""

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("start", "stop")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"variant shares must add up to 1, they add up to {total:g}")
        if self.start and self.stop and self.start >= self.stop:
            raise ValueError("start must be before stop")
        return self

    @property
    def control(self) -> VariantConfig:
        return self.variants[0]

    def shares(self) -> dict[str, float]:
        return {v.name: v.share for v in self.variants}

    def running(self, now: datetime) -> bool:
        return (self.start is None or now >= self.start) and (self.stop is None or now < self.stop)

    def targets(self, profile: dict[str, Any] | None) -> bool:
        """Whether a user with this profile (None: unknown user) is in the experiment."""
        t = self.targeting
        if not t.segments and not t.tiers:
            return True
        if profile is None:
            return False
        return (not t.segments or profile.get("segment") in t.segments) and (not t.tiers or profile.get("tier") in t.tiers)

    def assign(self, unit: str) -> VariantConfig:
        """The variant of ``unit`` (user id or session id): deterministic and sticky."""
        b = bucket(self.salt, unit)
        acc = 0.0
        for v in self.variants:
            acc += v.share
            if b < acc:
                return v
        return self.variants[-1]  # rounding: shares add up to 1 within 1e-6


class ExperimentsFile(ConfigModel):
    experiments: list[ExperimentConfig] = Field(default_factory=list, alias="experiment")

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _unique(self) -> ExperimentsFile:
        names = [e.name for e in self.experiments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"experiment names must be unique: {dup} appear more than once")
        return self


def bucket(salt: str, unit: str) -> float:
    """Uniform in [0, 1) from ``sha256(salt:unit)``; the first 8 bytes as an integer / 2**64."""
    digest = hashlib.sha256(f"{salt}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def load_experiments(path: str | Path | None, named_by: str = "experiments.file") -> list[ExperimentConfig]:
    """Read and validate an experiments file (``named_by``: where its name came from, for a
    missing file). ``None`` means no experiments.

    Raises
    ------
    storerec.core.config.ConfigError
        The file is missing, not TOML or invalid; the message names the file and the key.
    """
    if path is None:
        return []
    raw = read_toml(path, "experiments file", named_by)
    header = f"experiments file {path} is invalid:"
    return validate_config(ExperimentsFile, raw, header=header, hint=f"see {EXAMPLE_FILE}").experiments


@dataclass(frozen=True)
class Assignment:
    experiment: str | None
    variant: str | None
    config: VariantConfig | None


NO_EXPERIMENT = Assignment(None, None, None)


def assign(
    experiments: list[ExperimentConfig],
    disabled: set[str],
    *,
    user_id: str | None,
    session_id: str | None,
    profile: dict[str, Any] | None,
    now: datetime | None = None,
) -> Assignment:
    """The first running, enabled experiment that targets this shopper decides the variant;
    anyone else gets the default (no experiment)."""
    unit = user_id or session_id
    if not unit:
        return NO_EXPERIMENT
    now = now or datetime.now(UTC)
    for exp in experiments:
        if exp.name in disabled or not exp.running(now) or not exp.targets(profile if user_id else None):
            continue
        v = exp.assign(unit)
        return Assignment(exp.name, v.name, v)
    return NO_EXPERIMENT
