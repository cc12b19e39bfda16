"""A held-out traffic generator for the campaign monitor, written without reading the monitor's code.

It simulates, from first principles, who calls a model API and why, and drives that population through a
real gateway over HTTP (the admin API for accounts and keys, the official ``openai`` client for requests,
``X-Forwarded-For`` for each simulated client address):

- benign users: casual chat users, evaluation harnesses (formal templates, diverse items, greedy decoding,
  multiple choice scored with logprobs), a narrow support bot (one system prompt, a few questions, high
  volume), nightly batch summarisers (a cron job at a fixed pace), classrooms (many students behind one
  NAT address who sign up in the same lesson and ask about the same assignment), coding agents with tool
  calls;
- attackers in campaigns (one per kind; two Sybil and two low-and-slow ones at medium): a Sybil campaign
  (throwaway accounts created in a burst, a residential proxy per request, one template family asking for
  reasoning traces, the API space split between them),
  a logprob harvester (a sweep of short prefixes with top logprobs, around the clock), an evasive campaign
  (aged accounts, human rhythms, paraphrased asks with benign chat mixed in, a new address per session)
  and a low-and-slow campaign (a few requests a day per account, each with its own voice and address).

Modules: :mod:`.population` (kinds as config values, the accounts a size and seed draw), :mod:`.traffic`
(when and what each account sends, in simulated time), :mod:`.words` (its own templates and word lists),
:mod:`.drive` (the HTTP driver, :func:`generate`), :mod:`.retime` (an export on the simulated clock).

Evaluate (the gateway started with ``--trusted-proxy`` covering the generator's address, ``--admin-token``)::

    distillguard heldout generate --gateway http://127.0.0.1:8000 --admin-token T --out run/ --size small
    distillguard ledger export --config serve.toml --out run/
    distillguard heldout retime --parquet run/ledger.parquet --schedule run/schedule.jsonl
    distillguard monitor eval --parquet run/sim/ledger.parquet --labels run/labels.json

(``monitor eval --ledger`` on the gateway's database works too, on the compressed clock.) ``labels.json``
maps each account to ``{"label": "benign"|"attacker", "kind" (the same, the field ``monitor eval`` reads),
"persona" (the kind of account: casual, eval_harness, sybil_cot, ...), "campaign" (attackers' campaign id,
else null), "group"}``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["generate"]


def generate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`distillguard.heldout.drive.generate` (imported on use: the HTTP clients load lazily)."""
    from distillguard.heldout.drive import generate as _generate

    return _generate(*args, **kwargs)
