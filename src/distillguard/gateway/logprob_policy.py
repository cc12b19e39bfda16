"""What the API reveals of the model's distribution: the logprob policy of a tier.

Why it exists: ``top_logprobs`` together with ``logit_bias`` lets a client read whole rows of logits for
tokens it chooses (Carlini et al. 2024, arXiv 2403.06634; Finlayson et al. 2024, arXiv 2403.09539): with
the same large bias on ``k`` tokens, the returned logprobs are those tokens' logits minus one shared
constant, and a few thousand requests stack into a matrix whose rank is the model's hidden size and whose
row space is its final projection. ``distillguard distill extract-logits`` is that attack; this module is
the defence, one frozen object per tier, applied by the gateway and the local backend:

- **Report before the bias** (``after_bias=False``, the default, the fix providers shipped): logprobs and
  ``top_logprobs`` come from the distribution *without* the client's ``logit_bias`` (nor its temperature,
  nucleus or penalties: see gateway/local.py; with our watermark and the tier's sampling defence, so they
  never reveal the unmarked distribution). A
  biased token then surfaces only where the model itself ranks it, and its reported value ignores the bias.
  The bias still steers *sampling*: a token forced by a bias is returned with its unbiased logprob, which
  leaks one logit per request, so the attack's cost grows from ``m / (k - 1)`` requests per prompt to ``m``.
- **A cap on** ``top_logprobs`` (``max_top``): more is refused with a 400 naming the cap.
- **Rounding** (``decimals``): reported values rounded to that many decimals. Because the values are
  reported before the bias and at temperature 1 without penalties, a client cannot dither them with varying
  biases, temperatures or penalties, and the same context always gets the same rounding: the error does not
  average away over repeats (a temperature of 0.01 would otherwise read logits 100x finer). Rounding to
  ``d`` decimals adds an error of up to ``0.5 * 10**-d`` to every logit the attack reads, which fills the
  spectrum's tail.
- **A budget** (``daily_tokens``): completion tokens that carry logprobs, per account and UTC day, counted in
  the quota store like every other limit (scope ``logprobs:<account>``); past it, requests for logprobs get
  429 while requests without logprobs pass.
- **Refused outright** (``allowed=False``, the restricted tier): logprobs, top_logprobs and logit_bias
  get 403.

Legitimate use is what the defaults keep: a user who reads the top-5 logprobs of an answer's first token
(multiple-choice scoring, calibration) without a bias sees exactly what it saw before; rounding moves those
values by at most half a unit of the last kept decimal. ``bench/logprob_bench.py`` measures both sides.

Pure: no torch, no web server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillguard.errors import UserError
from distillguard.gateway.limits import Refusal

MAX_TOP_LOGPROBS = 20  # what the OpenAI API accepts
BUDGET_SCOPE = "logprobs:"


@dataclass(frozen=True)
class LogprobPolicy:
    """How one tier reports logprobs (module docstring)."""

    allowed: bool = True
    after_bias: bool = False
    max_top: int = MAX_TOP_LOGPROBS
    decimals: int | None = None
    daily_tokens: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_top <= MAX_TOP_LOGPROBS:
            raise UserError(f"max_top_logprobs must be in 0..{MAX_TOP_LOGPROBS} (got {self.max_top})")
        if self.decimals is not None and not 0 <= self.decimals <= 8:
            raise UserError(f"logprob_decimals must be in 0..8 or unset (got {self.decimals})")
        if self.daily_tokens is not None and self.daily_tokens < 1:
            raise UserError(f"logprob_daily_tokens must be a positive integer (got {self.daily_tokens})")

    def refusal(self, sampling: Any, request: Any = None) -> Refusal | None:
        """Why this policy refuses a request's logprob fields, or None."""
        top = getattr(request, "top_logprobs", None) if request is not None else None
        k = sampling.logprobs if sampling.logprobs is not None else None
        if not self.allowed:
            if sampling.asks_logprobs or sampling.logit_bias or top:
                return Refusal(
                    403,
                    "not_allowed_for_tier",
                    "logprobs, top_logprobs and logit_bias are not available to this account's tier.",
                    param="logprobs" if sampling.asks_logprobs else "logit_bias",
                )
            return None
        if k is not None and k > self.max_top:
            param = "top_logprobs" if top is not None else "logprobs"
            return Refusal(
                400,
                "invalid_value",
                f"{param} is {k}; this account's tier reports at most {self.max_top} alternatives per token.",
                param=param,
            )
        return None

    def report(self, value: float) -> float:
        """One logprob as the client sees it (rounded when ``decimals`` is set)."""
        return value if self.decimals is None else round(value, self.decimals)

    def backend_key(self) -> tuple:
        """What the backend needs of the policy (requests with different keys are not batched together)."""
        return (self.after_bias, self.decimals)

    def describe(self) -> dict[str, Any]:
        if not self.allowed:
            return {"allowed": False}
        return {
            "allowed": True,
            "reported": "after logit_bias" if self.after_bias else "before logit_bias",
            "max_top_logprobs": self.max_top,
            "decimals": self.decimals,
            "daily_tokens": self.daily_tokens,
        }


def budget_scope(account: str) -> str:
    """The quota-store scope that counts an account's logprob-bearing tokens."""
    return BUDGET_SCOPE + account


REFUSED = LogprobPolicy(allowed=False)
