"""From calibrated risk to the response ladder, with hysteresis, cooldown, allowlist and an audit trail.

Why it looks like this:

- **Thresholds are false-alarm rates.** An account moves *up* to a tier when its p-value (the estimated
  fraction of benign accounts that would score as high, see :mod:`detectors`) falls to that tier's
  ``up`` level: by default each tier's ``monitor_p`` (1e-3 for ``throttled``, 1e-4 for ``restricted``,
  1e-6 for ``suspended``). The rungs are the registered tiers of :mod:`distillguard.gateway.tiers` in rank
  order, so a registered tier is part of the ladder without changes here.
  Escalation is immediate and may skip tiers: strong evidence should not wait.
- **Hysteresis and cooldown** stop flapping: an account relaxes one tier at a time, only when its p-value
  is ``down_factor`` (default 100) times above the current tier's ``up`` level, and only after
  ``cooldown_s`` (default 6 hours) since its last change.
- **Allowlisted accounts** (config ``monitor_allowlist``: service accounts, the evaluation harness) are
  scored and reported but their tier is never changed.
- **Operators win.** The monitor remembers the tier it set; when the store holds another one (someone ran
  ``accounts tier`` or ``monitor revert``), the account is on hold for ``hold_s`` (default 7 days): the
  monitor leaves it alone, so a revert is never silently undone.
- **Every action is reversible and explained**: each change is written with
  ``AccountStore.set_tier(..., actor="monitor")`` (the store keeps its tier history) and appended to a
  JSONL decisions log with its p-value, top reasons and the ledger ``seq`` ids behind them.

The pure part (:class:`Policy`, :func:`decide`) has no I/O; :class:`DecisionLog` owns the files under
``home()/monitor/``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.gateway.tiers import BASE_TIER, TierSettings, get_tier, tier_names


@dataclass(frozen=True)
class Policy:
    """Tier thresholds (p-values), hysteresis, cooldown, operator hold and the allowlist.

    ``tiers`` is the ladder, lowest first (default: the registered tiers when the policy is made, so one
    scan sees one ladder); ``up`` has one p-value per tier above the base, in the same order (default:
    each tier's ``monitor_p``).
    """

    up: tuple[float, ...] | None = None
    down_factor: float = 100.0
    cooldown_s: float = 6 * 3600.0
    hold_s: float = 7 * 86400.0
    allowlist: frozenset[str] = frozenset()
    tiers: tuple[str, ...] = ()
    # the highest tier a scan against the *shipped* reference (simulated benign kinds, not the deployment's
    # own traffic) may move an account to (default: the first rung); a calibrated reference lifts the cap
    shipped_max_tier: str | None = None
    # what each tier does to answers (logprob policy, sampling defence), recorded with each decision
    tier_settings: TierSettings = field(default_factory=TierSettings, compare=False)

    def __post_init__(self) -> None:
        ladder = tuple(self.tiers) or tier_names()
        objs = [get_tier(t) for t in ladder]  # unknown names fail loudly
        if ladder[0] != BASE_TIER or [t.rank for t in objs] != sorted({t.rank for t in objs}):
            raise UserError(f"monitor tiers must be {BASE_TIER!r} then tiers of rising rank, got {ladder}")
        rungs = ladder[1:]
        up = tuple(t.monitor_p for t in objs[1:]) if self.up is None else tuple(self.up)
        object.__setattr__(self, "tiers", ladder)
        object.__setattr__(self, "up", up)
        bounds = (1.0, *up, 0.0)
        if not (
            len(up) == len(rungs)
            and bounds[0] > bounds[1]
            and all(a >= b for a, b in zip(up, up[1:], strict=False))
            and bounds[-2] > 0.0
        ):
            raise UserError(f"monitor tier thresholds must satisfy 1 > {' >= '.join(rungs)} > 0")
        if self.down_factor < 1.0:
            raise UserError("monitor_down_factor must be >= 1 (it is the hysteresis gap)")
        if self.cooldown_s < 0 or self.hold_s < 0:
            raise UserError("monitor cooldown and hold must be >= 0 seconds")
        if self.shipped_max_tier is None:
            object.__setattr__(self, "shipped_max_tier", rungs[0])
        elif self.shipped_max_tier not in ladder:
            raise UserError(
                f"monitor_shipped_max_tier must be one of {', '.join(ladder)}, got {self.shipped_max_tier!r}"
            )

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Policy:
        """``monitor_allowlist`` (list or comma-separated), each tier's ``config_key``
        (``monitor_throttle_p``, ``monitor_restrict_p``, ``monitor_suspend_p``, ...), ``monitor_down_factor``,
        ``monitor_cooldown_s``, ``monitor_hold_s``, ``monitor_shipped_max_tier``."""
        from distillguard.config import coerce_setting, settings_from_config

        c = config or {}
        ladder = tier_names()
        up = tuple(
            coerce_setting(t.config_key, float, c.get(t.config_key, t.monitor_p))
            for t in map(get_tier, ladder[1:])
        )
        from distillguard.gateway.settings import GatewaySettings

        ts = TierSettings.from_settings(GatewaySettings.from_mapping(dict(c)))
        return settings_from_config(cls, c, "monitor_", up=up, tiers=ladder, tier_settings=ts)

    @property
    def rungs(self) -> tuple[str, ...]:
        """The tiers the monitor can move an account to, lowest first (every tier but the base)."""
        return self.tiers[1:]

    @property
    def flag_tier(self) -> str:
        """The lowest rung: reaching it is what reports count as "flagged"."""
        return self.tiers[1]

    def rank(self, tier: str) -> int:
        """``tier``'s position on this policy's ladder (0 for the base)."""
        try:
            return self.tiers.index(tier)
        except ValueError:
            raise UserError(f"unknown tier {tier!r}; choose one of {', '.join(self.tiers)}") from None

    def threshold(self, tier: str) -> float:
        """The p-value at or below which an account reaches ``tier`` (1.0 for the base tier)."""
        i = self.rank(tier)
        return 1.0 if i == 0 else self.up[i - 1]

    def target(self, p_value: float, cap: str | None = None) -> str:
        """The highest tier whose threshold ``p_value`` reaches (no higher than ``cap``, if given)."""
        tier = self.tiers[0]
        for t, thr in zip(self.rungs, self.up, strict=True):
            if p_value <= thr:
                tier = t
        if cap is not None and self.rank(tier) > self.rank(cap):
            return cap
        return tier


@dataclass
class AccountState:
    """What the monitor remembers about one account between scans."""

    tier: str = BASE_TIER  # the tier the monitor last set (or saw, when it set none)
    since: float = 0.0  # when that tier was set
    hold_until: float = 0.0  # operator hold: no monitor changes before this time
    last_p: float = 1.0


@dataclass
class Decision:
    """One tier change (or, for ``kind="hold"``, one noticed operator override)."""

    account: str
    previous: str
    tier: str
    kind: str  # escalate | relax | hold | revert
    ts: float
    p_value: float = 1.0
    risk: float = 0.0
    cluster: str | None = None
    reasons: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    actor: str = "monitor"
    policy: dict[str, Any] = field(default_factory=dict)  # what the new tier does to answers (Tier.policy)

    def reason_text(self) -> str:
        head = f"p={self.p_value:.2e}" + (f" cluster {self.cluster}" if self.cluster else "")
        defence = self.policy.get("sampling_defence", {})
        applied = [f"sampling {defence['name']} {defence.get('strength', '')}".strip()] if defence else []
        return "; ".join([head, *self.reasons[:3], *applied])[:500]


def decide(
    account: str,
    p_value: float,
    store_tier: str,
    state: AccountState | None,
    policy: Policy,
    now: float,
    cap: str | None = None,
) -> tuple[Decision | None, AccountState]:
    """The monitor's move for one account (``None``: leave it) and its updated state; ``cap``: the highest
    tier the evidence may move it to (the shipped reference's). Pure."""
    st = AccountState(**asdict(state)) if state is not None else AccountState(tier=store_tier, since=0.0)
    st.last_p = p_value
    if account in policy.allowlist:
        return None, st
    if store_tier != st.tier:  # someone else changed the tier: respect it for a while
        dec = Decision(account, st.tier, store_tier, "hold", now, p_value, 1.0 - p_value, actor="operator",
                       policy=get_tier(store_tier).policy(policy.tier_settings))  # fmt: skip
        st.tier, st.since, st.hold_until = store_tier, now, now + policy.hold_s
        return dec, st
    if now < st.hold_until:
        return None, st
    target = policy.target(p_value, cap)
    current = st.tier
    if policy.rank(target) > policy.rank(current):
        dec = Decision(account, current, target, "escalate", now, p_value, 1.0 - p_value,
                       policy=get_tier(target).policy(policy.tier_settings))  # fmt: skip
        st.tier, st.since = target, now
        return dec, st
    if (
        policy.rank(target) < policy.rank(current)
        and now - st.since >= policy.cooldown_s
        and p_value > min(1.0, policy.down_factor * policy.threshold(current))
    ):
        lower = policy.tiers[policy.rank(current) - 1]
        dec = Decision(account, current, lower, "relax", now, p_value, 1.0 - p_value,
                       policy=get_tier(lower).policy(policy.tier_settings))  # fmt: skip
        st.tier, st.since = lower, now
        return dec, st
    return None, st


# --------------------------------------------------------------------------------------------------
# Files: decisions log and monitor state


class DecisionLog:
    """``decisions.jsonl`` (append-only, one decision per line) and ``state.json`` (per-account states and
    the follow position) in one directory, by default ``home()/monitor``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {self.root}: {exc}") from None
        self.path = self.root / "decisions.jsonl"
        self.state_path = self.root / "state.json"

    @classmethod
    def open_default(cls, config: dict[str, Any] | None = None) -> DecisionLog:
        from distillguard.monitor.settings import MonitorSettings

        return cls(MonitorSettings.from_config(config).state_dir())

    def append(self, decisions: Iterable[Decision]) -> None:
        lines = [json.dumps(asdict(d), ensure_ascii=False, sort_keys=True) for d in decisions]
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def __iter__(self) -> Iterator[Decision]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield Decision(**json.loads(line))
                except (ValueError, TypeError) as exc:
                    raise UserError(f"{self.path}:{n}: not a decision record ({exc})") from None

    def load_state(self) -> tuple[dict[str, AccountState], dict[str, Any]]:
        """Per-account states and free-form extras (the follow position)."""
        if not self.state_path.is_file():
            return {}, {}
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            states = {k: AccountState(**v) for k, v in data.get("accounts", {}).items()}
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.state_path} is not a monitor state file ({exc})") from None
        return states, dict(data.get("extra", {}))

    def save_state(self, states: dict[str, AccountState], extra: dict[str, Any] | None = None) -> None:
        data = {"accounts": {k: asdict(v) for k, v in sorted(states.items())}, "extra": extra or {}}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)


def apply_decisions(store: Any, log: DecisionLog, decisions: list[Decision]) -> list[Decision]:
    """Write tier changes to the account store (``actor="monitor"``) and every decision to the log."""
    done: list[Decision] = []
    for d in decisions:
        if d.kind in ("escalate", "relax"):
            store.set_tier(d.account, d.tier, reason=d.reason_text(), actor="monitor")
        done.append(d)
    log.append(done)
    return done


def revert(
    account: str,
    store: Any,
    log: DecisionLog,
    policy: Policy,
    *,
    to: str | None = None,
    now: float | None = None,
) -> Decision:
    """Undo the monitor's last change to ``account``: restore the tier it had before (or ``to``), and put
    the account on hold so the monitor does not redo it for ``policy.hold_s``."""
    now = time.time() if now is None else now
    last = None
    for d in log:
        if d.account == account and d.kind in ("escalate", "relax"):
            last = d
    current = store.get_account(account)["tier"]
    if to is None:
        if last is None:
            raise UserError(f"the monitor has not changed account {account!r}; nothing to revert")
        to = last.previous
    get_tier(to)  # unknown names fail here, naming the registered tiers
    store.set_tier(account, to, reason="monitor decision reverted by an operator", actor="operator")
    dec = Decision(
        account,
        current,
        to,
        "revert",
        now,
        actor="operator",
        policy=get_tier(to).policy(policy.tier_settings),
    )
    log.append([dec])
    states, extra = log.load_state()
    st = states.get(account, AccountState())
    st.tier, st.since, st.hold_until = to, now, now + policy.hold_s
    states[account] = st
    log.save_state(states, extra)
    return dec
