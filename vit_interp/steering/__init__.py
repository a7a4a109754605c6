"""Steering SAE latents that feed a head gate: specs, the wiring context manager, sweeps and controls."""

from vit_interp.steering.spec import MODES, TARGETS, SteeringSpec
from vit_interp.steering.sweep import SweepEngine, SweepResult, latent_sweep
from vit_interp.steering.wiring import Steering, check_wiring, steer

__all__ = ["MODES", "TARGETS", "Steering", "SteeringSpec", "SweepEngine", "SweepResult", "check_wiring", "latent_sweep", "steer"]
