"""Loading what the service serves: a registered version from MLflow (or baked into a Bento) with its serving snapshot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from storerec.core.errors import UserError
from storerec.core.settings import Settings
from storerec.events.experiments import ExperimentConfig, load_experiments
from storerec.ranking.ranker import RankResult
from storerec.registry.loading import BAKED_INFO, Loaded, _build, baked_info, baked_version, load  # noqa: F401  (the service's names)

log = logging.getLogger("storerec.serving")


@dataclass(frozen=True)
class ServingState:
    """Everything one request needs, swapped as a whole by a reload."""

    default: Loaded
    by_ref: dict[str, Loaded]  # model reference in the experiments file -> loaded version
    experiments: list[ExperimentConfig]
    disabled: dict[str, str]  # experiment name -> why it is off (a variant failed to load)

    def experiment_status(self, now: Any = None) -> list[dict[str, Any]]:
        from datetime import datetime

        now = now or datetime.now(UTC)
        out = []
        for exp in self.experiments:
            status = "disabled" if exp.name in self.disabled else ("running" if exp.running(now) else "not running")
            out.append(
                {
                    "name": exp.name,
                    "status": status,
                    "error": self.disabled.get(exp.name),
                    "salt": exp.salt,
                    "start": exp.start.isoformat() if exp.start else None,
                    "stop": exp.stop.isoformat() if exp.stop else None,
                    "targeting": exp.targeting.model_dump(),
                    "control": exp.control.name,
                    "variants": [
                        {
                            **v.model_dump(),
                            "model_name": self.by_ref[v.model].model_name if v.model in self.by_ref else None,
                            "model_version": self.by_ref[v.model].version if v.model in self.by_ref else None,
                        }
                        for v in exp.variants
                    ],
                }
            )
        return out


@dataclass(frozen=True)
class Ranked:
    """One shopper's list as the service ranks it (``StoreRec.rank_request``): the version that
    ranked it, the experiment and variant that chose it, the diversity in force and what the
    live overlay added (items of the current session as context) or left out."""

    loaded: Loaded
    result: RankResult
    experiment: str | None
    variant: str | None
    strength: float
    cap: int | None
    live_context: int
    live_excluded: int


def load_state(settings: Settings, ref: str | None = None) -> ServingState:
    """The default model plus every experiment variant's model, side by side. A variant that
    fails to load disables its experiment (logged, and shown by /readyz and /experiments); a
    default model that fails, or an invalid experiments file, is an error."""
    cache: dict[str, Loaded] = {}
    default = load(settings, ref, cache)
    experiments = load_experiments(settings.experiments.file)
    by_ref = {ref or settings.serving.model: default}
    disabled: dict[str, str] = {}
    for exp in experiments:
        for v in exp.variants:
            if v.model in by_ref:
                continue
            try:
                by_ref[v.model] = load(settings, v.model, cache)
            except UserError as exc:
                disabled[exp.name] = f"variant {v.name!r} (model {v.model!r}) failed to load: {exc}"
                log.error("experiment %s disabled: %s", exp.name, disabled[exp.name])
                break
    return ServingState(default, by_ref, experiments, disabled)
