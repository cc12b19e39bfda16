"""Benign traffic sent by software on behalf of an organisation, for the second held-out generator.

These are the hard negatives: high volume, templated, automated, often around the clock, sometimes with
logprobs, and legitimate.

- evaluation harnesses run a fixed benchmark (multiple choice scored from the logprobs of one token,
  true/false, short answers, arithmetic) at temperature 0, item after item at machine pace, again and again
  (each new checkpoint or setting re-runs the same items), on some days and from nightly CI;
- support bots answer a product's customers under one system prompt: a narrow set of questions, short
  conversations the bot carries itself, at the customers' hours;
- batch summarisers are cron jobs: at the same minute every night, a queue of tickets, logs or notes, one
  after another under one template;
- translation pipelines run when content ships: a batch of interface strings times a few languages;
- documentation search (RAG) forwards its users' questions with retrieved passages, so over time it asks
  about a broad range of APIs (with the popular ones far more often);
- calibration researchers ask the same question set in several formats with logprobs, on study days;
- prompt engineers run A/B grids: the same inputs under each template variant, temperature and seed;
- consumer products built on the API: one template, many end users (a few of them very active);
- labelling jobs classify batches of short texts and ask for a JSON label.
"""

from __future__ import annotations

import random

from distillguard.heldout.plan import Account
from distillguard.heldout2 import texts, words
from distillguard.heldout2.common import (
    HOUR,
    MINUTE,
    Ctx,
    at_local,
    chat,
    completion,
    hex_id,
    is_weekend,
    local_days,
    local_time,
    poisson,
    rng_for,
    zipf_weights,
)


def _ip(r: random.Random, acct: Account) -> str:
    return r.choice(acct.ips)


def eval_harness(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    b = rng_for("benchmark", ctx.seed, acct.name)  # the benchmark is fixed: every run asks the same items
    n_items = max(20, round(x["items"] * ctx.vol))
    pool = sorted(ctx.apis)
    chosen = b.sample(pool, min(n_items, len(pool)))
    while len(chosen) < n_items:
        chosen.append(b.choice(pool))
    fmts = {"mc": ("mc",), "qa": ("qa",), "mixed": ("mc", "tf", "qa", "math")}[x["fmt"]]
    items = [
        (api, fmts[i % len(fmts)], texts.eval_item(b, api, b.sample(pool, 3), fmts[i % len(fmts)]))
        for i, api in enumerate(chosen)
    ]
    for day in local_days(ctx.days):
        p = x["runs_per_week"] / (5.0 if not is_weekend(day) else 40.0)
        for _ in range(poisson(r, p)):
            nightly = r.random() < 0.3
            t = (
                at_local(day, acct.tz, 2.0 + r.random() * 0.2)
                if nightly
                else local_time(r, day, acct.tz, "office")
            )
            ip = acct.ips[-1] if nightly else acct.ips[0]
            session = sink.session(acct)
            sampled = r.random() < 0.25  # a pass@k run: the same items, sampled several times
            for _api, fmt, prompt in items:
                if fmt in ("mc", "tf"):
                    body = completion(prompt, max_tokens=1, temperature=0.0, logprobs=5)
                    sink.add(acct, t, ip, body, endpoint="completions", session=session)
                else:
                    sys_prompt = "You are a helpful assistant. Answer concisely."
                    params = {"temperature": 0.8, "n": 5} if sampled else {"temperature": 0.0, "seed": 1234}
                    sink.add(acct, t, ip, chat(prompt, sys_prompt, max_tokens=64, **params), session=session)
                t += r.expovariate(1 / 0.9) + 0.2


def support_conversations(acct: Account, ctx: Ctx, r: random.Random, product_index: int) -> None:
    """A support bot's day: customer conversations at the customers' hours (shared with a tenant below)."""
    x, sink = acct.extra, ctx.sink
    product = texts.SUPPORT_PRODUCTS[product_index % len(texts.SUPPORT_PRODUCTS)]
    system = texts.support_system(product)
    stream = r.random() < 0.5
    for day in local_days(ctx.days):
        n = poisson(r, ctx.scaled(40 * x.get("load", 1.0)) * (0.45 if is_weekend(day) else 1.0))
        for _ in range(n):
            t = local_time(r, day, acct.tz, "customers")
            user = "cust_" + hex_id(r, 10)
            history: list[tuple[str, str]] = []
            session = sink.session(acct)
            for _ in range(1 + min(3, int(r.expovariate(1 / 0.8)))):
                q = texts.support_question(r, product)
                body = chat(q, system, history, temperature=0.3, max_tokens=250, user=user)
                sink.add(acct, t, _ip(r, acct), body, stream=stream, session=session)
                history.append((q, texts.support_reply(r)))
                t += r.uniform(25, 150)


def support_bot(acct: Account, ctx: Ctx) -> None:
    r = ctx.rng(acct.name)
    support_conversations(acct, ctx, r, r.randrange(len(texts.SUPPORT_PRODUCTS)))


_SUMMARY = {
    "ticket": "Summarize the following support ticket in 3 bullet points for the account manager:\n\n{doc}",
    "log": "Summarize these overnight log lines for the on-call engineer. Mention errors first.\n\n{doc}",
    "notes": "Turn these meeting notes into a short summary with action items:\n\n{doc}",
}


def batch_summarizer(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    kind = r.choice(tuple(_SUMMARY))
    hour = r.choice((1.0, 2.0, 2.5, 5.0, 6.5))  # the crontab line
    weekdays_only = kind != "log"
    make = {"ticket": texts.ticket, "log": texts.log_excerpt, "notes": texts.meeting_notes}[kind]
    hourly = r.random() < 0.3  # some also drain a small queue every hour
    for day in local_days(ctx.days):
        if weekdays_only and is_weekend(day):
            continue
        t = at_local(day, acct.tz, hour) + r.uniform(0, 20)
        session = sink.session(acct)
        for _ in range(max(1, round(r.gauss(45, 10) * x["load"] * ctx.vol))):
            body = chat(_SUMMARY[kind].format(doc=make(r)), temperature=0.2, max_tokens=200)
            sink.add(acct, t, _ip(r, acct), body, session=session)
            t += r.uniform(1.0, 3.5)
        if hourly:
            for h in range(24):
                t = at_local(day, acct.tz, h + 5 / 60) + r.uniform(0, 5)
                for _ in range(poisson(r, ctx.scaled(1.5))):
                    sink.add(
                        acct,
                        t,
                        _ip(r, acct),
                        chat(_SUMMARY[kind].format(doc=make(r)), temperature=0.2, max_tokens=200),
                    )
                    t += r.uniform(1.0, 3.0)


def translation_pipeline(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    langs = r.sample(words.LANGUAGES, r.randint(2, 5))
    for day in local_days(ctx.days):
        if is_weekend(day):
            continue
        for _ in range(poisson(r, 1.6 * x["load"])):
            t = local_time(r, day, acct.tz, "office")
            session = sink.session(acct)
            strings = [texts.ui_string(r) for _ in range(max(2, round(r.randint(6, 16) * ctx.vol)))]
            for lang in r.sample(langs, r.randint(1, len(langs))):
                system = (
                    f"You are a professional translator for a software product. Translate the user's text "
                    f"into {lang}. Preserve placeholders in curly braces, HTML tags and punctuation. "
                    "Output only the translation."
                )
                for s in strings:
                    sink.add(
                        acct,
                        t,
                        _ip(r, acct),
                        chat(s, system, temperature=0.0, max_tokens=120),
                        session=session,
                    )
                    t += r.uniform(0.4, 2.0)


RAG_SYSTEM = (
    "You answer questions about the Python standard library using only the provided context. Cite "
    "sources like [1]. If the context does not contain the answer, say you don't know."
)


def rag_app(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    stream = r.random() < 0.6
    for day in local_days(ctx.days):
        n = poisson(r, ctx.scaled(50 * x["load"]) * (0.55 if is_weekend(day) else 1.0))
        for _ in range(n):
            t = local_time(r, day, acct.tz, "global")
            api = ctx.pop.pick(r)
            related = [a for a in ctx.apis if texts.module(a) == texts.module(api) and a != api][:2]
            question = texts.rag_question(r, api, ctx.pop.pick(r))
            body = chat(
                texts.rag_prompt(r, api, related, question),
                RAG_SYSTEM,
                temperature=0.1,
                max_tokens=300,
                user="u-" + hex_id(r, 8),
            )
            sink.add(acct, t, _ip(r, acct), body, stream=stream, session=sink.session(acct))


_CAL_FORMATS = (
    ("chat", "Answer with True or False only.", "{s}"),
    ("chat", "Respond with a single letter.", "{s}\n(A) True\n(B) False"),
    ("completions", None, "Statement: {s}\nIs the statement true? Answer:"),
    ("chat", None, "{s}\nHow confident are you that this is true? Answer True or False."),
)


def logprob_researcher(acct: Account, ctx: Ctx) -> None:
    r, sink = ctx.rng(acct.name), ctx.sink
    q = rng_for("question-set", ctx.seed, acct.name)
    pool = sorted(ctx.apis)
    statements = []
    for _ in range(max(15, round(q.randint(60, 140) * ctx.vol))):
        api = q.choice(pool)
        claim = texts.module(api) if q.random() < 0.5 else texts.module(q.choice(pool))
        statements.append(f"{texts.leaf(api)} is defined in the {claim} module.")
    top = r.choice((5, 10, 20))
    for day in local_days(ctx.days):
        if is_weekend(day) or r.random() > 0.4:
            continue
        t = local_time(r, day, acct.tz, "office")
        for endpoint, system, fmt in r.sample(_CAL_FORMATS, r.randint(1, 3)):
            session = sink.session(acct)
            temp = r.choice((0.0, 1.0))
            for s in statements:
                if endpoint == "chat":
                    body = chat(
                        fmt.format(s=s),
                        system,
                        max_tokens=1,
                        temperature=temp,
                        logprobs=True,
                        top_logprobs=top,
                    )
                else:
                    body = completion(fmt.format(s=s), max_tokens=1, temperature=temp, logprobs=min(top, 5))
                sink.add(acct, t, _ip(r, acct), body, endpoint=endpoint, session=session)
                t += r.uniform(0.5, 2.5)
            t += r.uniform(5, 40) * MINUTE


def prompt_ab(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    inputs = r.sample(words.PRODUCTS, min(len(words.PRODUCTS), max(3, round(r.randint(6, 12) * ctx.vol))))
    for day in local_days(ctx.days):
        if is_weekend(day) or r.random() > 0.5 * x["load"]:
            continue
        t = local_time(r, day, acct.tz, "office")
        session = sink.session(acct)
        variants = r.sample(texts.AB_VARIANTS, r.randint(2, 4))
        settings = r.sample(((0.0, 1), (0.7, 1), (0.7, 2), (1.0, 3)), r.randint(1, 2))
        for temp, seed in settings:
            for v in variants:
                for item in inputs:
                    body = chat(v.format(x=item), temperature=temp, seed=seed, max_tokens=150)
                    sink.add(acct, t, _ip(r, acct), body, session=session)
                    t += r.uniform(0.5, 3.0)


def wrapper_product(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    system, app = r.choice(texts.WRAPPER_APPS)
    system = system.format(tone=r.choice(words.TONES))
    users = [f"user_{hex_id(r, 8)}" for _ in range(300)]
    cum: list[float] = []
    total = 0.0
    for w in zipf_weights(len(users), 0.9):  # a few enthusiasts, many occasional users
        total += w
        cum.append(total)
    for day in local_days(ctx.days):
        n = poisson(r, ctx.scaled(55 * x["load"]) * (1.2 if is_weekend(day) else 1.0))
        for _ in range(n):
            t = local_time(r, day, acct.tz, "human")
            body = chat(
                texts.wrapper_input(r, app, ctx.pop.pick(r)),
                system,
                temperature=0.7,
                max_tokens=300,
                user=r.choices(users, cum_weights=cum)[0],
            )
            sink.add(acct, t, _ip(r, acct), body, stream=r.random() < 0.7, session=sink.session(acct))


_LABEL_TASKS = (
    ("sentiment", "positive, negative, neutral"),
    ("topic", "shipping, quality, price, service, other"),
    ("contains_personal_data", "yes, no"),
)


def data_labeller(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    task, labels = r.choice(_LABEL_TASKS)
    system = "You are a data labelling tool. Reply only with a JSON object."
    for day in local_days(ctx.days):
        if is_weekend(day) or r.random() > 0.5 * x["load"]:
            continue
        t = local_time(r, day, acct.tz, "office")
        session = sink.session(acct)
        for _ in range(max(5, round(r.randint(60, 150) * ctx.vol))):
            text = (
                f'Task: {task}\nAllowed labels: {labels}\nText: {texts.review(r)}\nReturn {{"label": "..."}}.'
            )
            sink.add(
                acct, t, _ip(r, acct), chat(text, system, temperature=0.0, max_tokens=20), session=session
            )
            t += r.uniform(0.3, 1.5)
        t += HOUR


PLANNERS = {
    "eval_harness": eval_harness,
    "support_bot": support_bot,
    "batch_summarizer": batch_summarizer,
    "translation_pipeline": translation_pipeline,
    "rag_app": rag_app,
    "logprob_researcher": logprob_researcher,
    "prompt_ab": prompt_ab,
    "wrapper_product": wrapper_product,
    "data_labeller": data_labeller,
}
