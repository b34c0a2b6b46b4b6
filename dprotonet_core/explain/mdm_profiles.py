"""How MDM profiles are named and looked up: the label every caption and table row carries (profile, steps,
schedule, arithmetic, step size, loss), a card's default profile, and the profile registry (config.MDM_PROFILES).
Split from mdm.py, which keeps the equations; mdm re-exports these names."""

from __future__ import annotations

from dprotonet_core.config import DEFAULT_MDM_PROFILE, MDM_PROFILES, MDMConfig


def loss_label(cfg: MDMConfig) -> str:
    """The loss a configuration minimises, in words (what every caption and table row names)."""
    if cfg.distance == "deletion":
        return f"loss eq. 13 / 14 with the deletion-scaled distance, eta {cfg.effective_eta:g} (a named deviation)"
    return f"loss eq. 13 / 14 as printed, eta {cfg.effective_eta:g}"


def method_label(cfg: MDMConfig, name: str | None = None) -> str:
    """'<profile>: <optimiser> <steps> steps, <loss>': what produced a mask stack."""
    head = f"{name} profile: " if name else ""
    schedule = {"constant": "", "cosine": ", cosine lr decay",
                "tail": f", lr decayed over the last {cfg.lr_tail:.0%} of steps"}.get(cfg.lr_schedule, "")
    arithmetic = ""
    if cfg.precision == "bf16":
        last = fp32_tail_steps(cfg)
        arithmetic = ", network in bf16" + (f" (its last {last} steps in float32)" if last else "")
    return (f"{head}{cfg.optimizer.capitalize()} {cfg.iterations} steps{schedule}{arithmetic}{_rates_label(cfg)}, "
            f"{loss_label(cfg)}")


def _rates_label(cfg: MDMConfig) -> str:
    """', lr 0.08, betas (0.430, 0.992)' where the step size or Adam's decay rates differ from the paper protocol's
    (lr 0.01, torch's betas (0.9, 0.999)); '' where they are the paper's."""
    from dprotonet_core.config import PAPER_MDM

    parts = []
    if cfg.lr != PAPER_MDM.lr:
        parts.append(f"lr {cfg.lr:g}")
    if cfg.optimizer == "adam" and tuple(cfg.betas) != tuple(PAPER_MDM.betas):
        parts.append(f"betas ({cfg.betas[0]:.3f}, {cfg.betas[1]:.3f})")
    return (", " + ", ".join(parts)) if parts else ""


def card_default_profile(card: dict | None) -> str:
    """The MDM profile a checkpoint's card names as its default (card["mdm_default_profile"]["profile"]: the fastest
    profile that met issue 19's quality bar on that checkpoint, python -m bench.mdm_quality), else the config's
    DEFAULT_MDM_PROFILE. A name that is not a profile is ignored."""
    record = (card or {}).get("mdm_default_profile")
    name = record.get("profile") if isinstance(record, dict) else None
    return name if name in MDM_PROFILES else DEFAULT_MDM_PROFILE


def fp32_tail_steps(cfg: MDMConfig) -> int:
    """How many of the last steps of a bf16 run are computed in float32 (MDMConfig.fp32_tail); 0 under fp32."""
    if cfg.precision != "bf16" or cfg.fp32_tail <= 0:
        return 0
    return min(cfg.iterations, round(cfg.iterations * cfg.fp32_tail))


def profile(name: str) -> MDMConfig:
    """The named MDMConfig ("paper" or "fast", see config.MDM_PROFILES)."""
    try:
        return MDM_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown MDM profile {name!r}; choose one of {', '.join(MDM_PROFILES)}") from None


# --- eq. 12 ---------------------------------------------------------------------------------
