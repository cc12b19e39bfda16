"""A second held-out traffic generator for the campaign monitor, written without reading the monitor's code
or the first held-out generator.

It simulates, from first principles, who calls a model API and why, as an API provider would see it: a
population of accounts (people, organisations' services, and distillation campaigns) and every request
each one sends, when, and from which address. :func:`distillguard.heldout.drive.generate` (``distillguard
heldout generate --generator heldout2``) creates the accounts over the admin API at their sign-up times and
sends the plan through a real gateway with the official ``openai`` client.

Why these accounts. A monitor that flags distillation must not flag the customers who look most like it,
so the benign side is built around them: evaluation harnesses (formal templates, diverse items,
temperature 0, multiple choice scored with logprobs, re-run again and again), support bots (one system
prompt, narrow and repetitive), cron summarisers, classrooms (one school address, a sign-up burst in one
lesson, the same assignment), coding agents (tool definitions, multi-step loops), plus documentation search
(RAG) products that forward their users' questions across the whole API space, calibration researchers who
request logprobs, prompt engineers running A/B grids, consumer products behind one template, translation
and labelling pipelines, editor plug-ins, a hackathon (a sign-up burst from one venue Wi-Fi, intense for a
day) and casual users (some through a VPN whose exits strangers share). The attackers follow what providers
have published about real campaigns (thousands of fraudulent accounts behind proxy networks, "hydra"
clusters, reasoning-trace elicitation, templated prompts mixed with ordinary traffic) and what a careful
adversary would add: accounts disguised as an evaluation harness or a consumer product under a front
organisation, a dialogue-data vendor sweeping system prompts, a real company's key harvesting at night,
accounts that each stay below any per-account threshold, and human-paced paraphrased traffic from rotating
residential addresses. Every campaign pays for its queries, so its volume is what its coverage goal needs.

Modules: :mod:`.population` (who, with labels), :mod:`.traffic` (the plan), :mod:`.humans` and
:mod:`.services` (benign behaviour), :mod:`.campaigns` (attacks), :mod:`.texts` and :mod:`.asks` (what
they write), :mod:`.words` (word lists, address ranges), :mod:`.common` (clocks, addresses, names).

Sizes: ``small`` (2 days, a few dozen accounts, about a thousand requests: fast enough for a test),
``medium`` (5 days, about 440 accounts) and ``month`` (medium's accounts over 30 days; campaigns that
would not run for a whole month work in windows of it). Simulated time 0 is Monday 00:00 UTC.
"""

from __future__ import annotations

from distillguard.heldout.plan import Generator
from distillguard.heldout2.common import SIZES
from distillguard.heldout2.population import build_population
from distillguard.heldout2.traffic import plan_traffic

GENERATOR = Generator("heldout2", SIZES, build_population, plan_traffic)

__all__ = ["GENERATOR", "SIZES", "build_population", "plan_traffic"]
