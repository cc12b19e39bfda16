"""Every gateway setting is written once: ``serve``'s flags are checked against ``GatewaySettings``' fields.

A flag names a field (its name, or a spelling in ``settings.ALIASES``); a field without a flag is listed
below with the reason. A new setting therefore either gets its flag or an entry here, and a flag cannot
silently set nothing.
"""

from __future__ import annotations

import dataclasses
import inspect

from distillguard.gateway.serve import NEGATED, NOT_SETTINGS, given_flags, serve
from distillguard.gateway.settings import ALIASES, GatewaySettings

NO_FLAG = {
    "extra": "not a setting: the config keys that are not gateway settings",
    "secret": "a secret on the command line shows in the process list: config or DISTILLGUARD_SECRET only",
    "throttled_rpm": "tier policy, set in the config with the other throttled_* limits",
    "throttled_tpm": "tier policy, set in the config with the other throttled_* limits",
    "throttled_max_concurrent": "tier policy, set in the config with the other throttled_* limits",
    "upstream_timeout": "proxy tuning, config only",
    "logprobs_after_bias": "logprob policy (gateway/logprob_policy.py), config only",
    "max_top_logprobs": "logprob policy, config only",
    "logprob_decimals": "logprob policy, config only",
    "logprob_daily_tokens": "logprob policy, config only",
    "restricted_defence": "tier policy (countermeasures/defences.py), config only",
    "restricted_defence_strength": "tier policy, config only",
    "restricted_context_width": "the restricted tier's watermark, config only (with --restricted-scheme)",
    "ads_proxy": "the restricted tier's anti-distillation sampling, config only",
    "ads_data": "the restricted tier's anti-distillation sampling, config only",
    "ads_examples": "the restricted tier's anti-distillation sampling, config only",
    "ads_epsilon": "the restricted tier's anti-distillation sampling, config only",
}


def flag_targets() -> dict[str, str]:
    """serve's flag parameters -> the settings field each one sets."""
    params = inspect.signature(serve).parameters
    return {p: NEGATED.get(p) or ALIASES.get(p, p) for p in params if p not in NOT_SETTINGS}


def problems(fields: set[str], targets: dict[str, str]) -> list[str]:
    """What breaks "a setting is written once": flags that set nothing, settings nothing sets."""
    out = [f"--{p.replace('_', '-')} sets no setting" for p, t in sorted(targets.items()) if t not in fields]
    flagged = set(targets.values())
    out += [
        f"{f} has neither a serve flag nor a reason in NO_FLAG"
        for f in sorted(fields - flagged - set(NO_FLAG))
    ]
    out += [f"{f} is in NO_FLAG but has a serve flag now" for f in sorted(set(NO_FLAG) & flagged)]
    out += [f"several serve flags set {t}" for t in sorted(flagged) if list(targets.values()).count(t) > 1]
    return out


def test_every_serve_flag_sets_a_setting_and_every_setting_has_a_flag_or_a_reason() -> None:
    fields = {f.name for f in dataclasses.fields(GatewaySettings)}
    assert problems(fields, flag_targets()) == []
    assert flag_targets()["preset"] == "world_preset" and flag_targets()["no_watermark"] == "watermark"


def test_the_check_names_each_kind_of_problem() -> None:
    targets = {"port": "port", "colour": "colour", "secret": "secret", "bind": "host", "host": "host"}
    assert problems({"port", "host", "secret", "timeout"}, targets) == [
        "--colour sets no setting",
        "timeout has neither a serve flag nor a reason in NO_FLAG",
        "secret is in NO_FLAG but has a serve flag now",
        "several serve flags set host",
    ]


def test_serve_passes_on_only_the_flags_that_were_given() -> None:
    given = given_flags(
        {
            "port": 9000,
            "host": None,
            "trusted_proxy": [],
            "ip_allow": ["10.0.0.0/8"],
            "hf_compat": False,
            "no_watermark": False,
            "redact_prompts": False,
            "protect_internal": None,
            "preset": "small",
        }  # fmt: skip
    )
    # --keep-prompts (False) is a choice; an off switch is not
    assert given == {"port": 9000, "ip_allow": ["10.0.0.0/8"], "redact_prompts": False, "preset": "small"}
    assert given_flags({"no_watermark": True, "hf_compat": True}) == {"watermark": False, "hf_compat": True}
    s = GatewaySettings.load(
        None, **given_flags({"no_watermark": True, "preset": "small", "trusted_proxy": ["::1"]})
    )
    assert (s.watermark, s.world_preset, s.trusted_proxies) == (False, "small", ("::1",))
