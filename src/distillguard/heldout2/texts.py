"""What legitimate callers write: prompt builders for every benign kind of the second held-out generator.

Each builder takes a seeded generator and returns text (or a small structure). Variety comes from
combining templates with slots, and from the sloppiness of people (lower case, missing punctuation, typos,
pasted code), so two people rarely write the same thing unless they really would (students pasting the
same assignment, a support bot's customers asking the same few questions).
"""

from __future__ import annotations

import random

from distillguard.heldout2 import words


def module(api: str) -> str:
    return api.rsplit(".", 1)[0] if "." in api else api


def leaf(api: str) -> str:
    return api.rsplit(".", 1)[-1]


def sloppy(rng: random.Random, text: str, p: float = 0.5) -> str:
    """How people type into a chat box: sometimes lower case, no final punctuation, a slipped letter."""
    if rng.random() < p:
        text = text[0].lower() + text[1:]
    if rng.random() < p * 0.6:
        text = text.rstrip("?.!")
    if rng.random() < p * 0.3 and len(text) > 12:
        i = rng.randrange(4, len(text) - 4)
        if text[i].isalpha() and text[i + 1].isalpha():
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text


# -- everyday chat -------------------------------------------------------------------------------------------

_EVERYDAY = (
    "Write a {tone} email to my {relation} about {event}.",
    "Can you help me write a message to my {relation} about {event}? Keep it {tone}.",
    "What's the difference between {pair0} and {pair1}?",
    "Give me a {n}-day meal plan. I'm trying to eat more {food}.",
    "I have {food} and {food2}. What can I cook tonight?",
    "Suggest {n} names for my {hobby}.",
    "How do I {chore}?",
    "Explain {concept} like I'm five.",
    "Explain {concept} in simple terms, I have an exam tomorrow.",
    "Help me plan a {n}-day trip to {city}. I like food and walking.",
    "What are some good {genre} books for someone who liked The Martian?",
    "Write a haiku about {topic}.",
    "Write a short poem about {topic} for a birthday card.",
    "Is it worth visiting {city} in winter?",
    "Can you proofread this? 'Their going to announce the results tomorow, so lets wait and see.'",
    "Translate 'where is the nearest pharmacy' into {lang}.",
    "What should I pack for a week in {city}?",
    "Give me {n} ideas for a rainy Sunday with kids.",
    "My cover letter feels boring. How do I start it better?",
    "how many calories in a banana",
    "What's a good way to learn {lang} in three months?",
    "Summarize the main causes of the French Revolution in a few bullet points.",
    "Is {food} healthy to eat every day?",
)
_PYTHON_CASUAL = (
    "what does {api} do",
    "How do I use {api}?",
    "can you show me an example of {api}",
    "What's the difference between {api} and {api2}?",
    "Why would I use {api} instead of writing it myself?",
    "I keep seeing {api} in tutorials, what is it for?",
    "is {api} safe to use with user input?",
)
_FOLLOWUPS = (
    "Thanks! Can you make it shorter?",
    "can you make it more formal",
    "ok, and why is that?",
    "Can you give me an example?",
    "what about {city}?",
    "Make it funnier please.",
    "Say that in {lang}.",
    "Great. Now a version for my {relation}.",
    "hmm that doesn't look right",
    "Can you explain that last part?",
    "thanks!! one more question: how do I {chore}?",
    "Perfect, and a shorter subject line?",
)


def _fill(rng: random.Random, template: str, api: str = "", api2: str = "") -> str:
    pair = rng.choice(words.PAIRS)
    return template.format(
        tone=rng.choice(words.TONES),
        relation=rng.choice(words.RELATIONS),
        event=rng.choice(words.EVENTS),
        pair0=pair[0],
        pair1=pair[1],
        n=rng.randint(3, 7),
        food=rng.choice(words.FOODS),
        food2=rng.choice(words.FOODS),
        hobby=rng.choice(words.HOBBY_THINGS),
        chore=rng.choice(words.CHORES),
        concept=rng.choice(words.CONCEPTS),
        city=rng.choice(words.CITIES),
        genre=rng.choice(words.BOOK_GENRES),
        topic=rng.choice(words.TOPICS),
        lang=rng.choice(words.LANGUAGES),
        api=api,
        api2=api2,
    )


def everyday(rng: random.Random) -> str:
    return sloppy(rng, _fill(rng, rng.choice(_EVERYDAY)), 0.35)


def python_casual(rng: random.Random, api: str, api2: str) -> str:
    return sloppy(rng, _fill(rng, rng.choice(_PYTHON_CASUAL), api, api2), 0.5)


def followup(rng: random.Random) -> str:
    return _fill(rng, rng.choice(_FOLLOWUPS))


# -- developers ----------------------------------------------------------------------------------------------


def snippet(rng: random.Random, api: str) -> str:
    var = rng.choice(("data", "result", "items", "cfg", "out", "rows", "path"))
    arg = rng.choice(("path", "text", "payload", "values", "name", "'config.json'", "line"))
    head = f"import {module(api).split('.')[0]}\n\n"
    body = rng.choice(
        (
            f"def load({arg.strip(chr(39))}):\n    {var} = {api}({arg})\n    return {var}[0]\n",
            f"for line in open('input.txt'):\n    {var} = {api}(line)\n    print({var}['id'])\n",
            f"{var} = {api}({arg})\nif {var}:\n    print({var}.keys())\n",
        )
    )
    return head + body


_DEV = (
    "How do I {task} in Python?",
    "What's the idiomatic way to {task}?",
    "Write a Python function to {task}. Include type hints.",
    "Why does this raise {error}?\n\n```python\n{code}```",
    "I get {error} on this code, what am I doing wrong?\n{code}",
    "Refactor this to be more readable:\n```python\n{code}```",
    "Is {api} the right tool to {task}, or is there something better?",
    "Write pytest tests for this:\n```python\n{code}```",
    "Explain what this code does line by line:\n{code}",
)


def developer(rng: random.Random, api: str) -> str:
    t = rng.choice(_DEV)
    return t.format(
        task=rng.choice(words.DEV_TASKS), error=rng.choice(words.ERRORS), code=snippet(rng, api), api=api
    )


# -- classrooms ----------------------------------------------------------------------------------------------

_GOALS = (
    "count how often each word appears in a text file and print the ten most common",
    "read a list of student grades from a CSV file and print the average",
    "rename every file in a folder so that the names are lower case",
    "check whether a password is strong enough and explain why not",
    "simulate rolling two dice a thousand times and show how often each total comes up",
    "save a small address book to a file and load it back",
    "find all the email addresses in a block of text",
    "make a to-do list program that remembers items between runs",
)


def assignment(rng: random.Random, number: int, apis: list[str]) -> str:
    uses = " and ".join(apis)
    return (
        f"Assignment {number}: Write a Python program that uses {uses} to {rng.choice(_GOALS)}. "
        "Add comments explaining each step."
    )


_STUDENT = (
    "what does {api} do",
    "what does {api} do??",
    "how do i use {api} for my assignment",
    "explain {api} simply",
    "can you explain {api} with an example",
    "i dont understand {api}",
    "is {api} the same as {api2}",
    "my code gives {error} what does that mean",
    "whats wrong with my code\n{code}",
    "how do i start this: {task}",
)


def student(rng: random.Random, task: str, apis: list[str]) -> str:
    if rng.random() < 0.25:
        return task  # pasted straight from the worksheet
    api = rng.choice(apis)
    other = rng.choice(apis)
    text = rng.choice(_STUDENT).format(
        api=api,
        api2=other,
        error=rng.choice(words.ERRORS),
        code=snippet(rng, api),
        task=task.split(": ", 1)[-1],
    )
    return sloppy(rng, text, 0.8)


# -- support bots --------------------------------------------------------------------------------------------

# name, what it is, (a numbered thing customers ask about, their subscription, a part of the app)
SUPPORT_PRODUCTS = (
    ("Parcelwise", "a parcel delivery service", ("parcel", "delivery plan", "tracking page")),
    (
        "Ledgerly",
        "an invoicing and accounting app for small businesses",
        ("invoice", "subscription", "dashboard"),
    ),
    ("Trailhead Bikes", "an online bicycle shop", ("order", "service plan", "account page")),
    ("Nimbus Drive", "a cloud storage subscription", ("upload", "storage plan", "shared folders")),
    ("Fitloop", "a fitness class booking app", ("booking", "membership", "class schedule")),
)
_SUPPORT_ASKS = (
    "Where is my {n0} {num}?",
    "hi, my {n0} {num} still hasn't arrived",
    "How do I reset my password?",
    "I was charged twice this month",
    "How do I cancel my {n1}?",
    "Can I change the address on {n0} {num}?",
    "The app keeps crashing when I open my {n2}",
    "Do you offer a student discount?",
    "How do I export my data?",
    "I want a refund for {n0} {num}",
    "How do I add another user to my {n2}?",
    "What are your support hours?",
    "can i upgrade my {n1} mid month",
    "why was my card declined",
    "I never got the confirmation email",
    "how do I delete my {n2}",
    "is there a phone number I can call",
    "my discount code doesn't work",
)
_SUPPORT_REPLIES = (
    "I'm sorry about that. Could you confirm the email address on your account?",
    "Thanks for reaching out! I've looked into this and can help.",
    "I understand. Let me check the status for you.",
    "You can do that from Settings. Would you like step-by-step instructions?",
)


def support_system(product: tuple[str, str, tuple[str, ...]]) -> str:
    name, what, _ = product
    return (
        f"You are the customer support assistant for {name}, {what}. Be concise and friendly. Only answer "
        f"questions about {name}. If you cannot help, offer to connect the customer with a human agent. "
        "Never promise refunds; say the billing team will review the request."
    )


def support_question(rng: random.Random, product: tuple[str, str, tuple[str, ...]]) -> str:
    nouns = product[2]
    text = rng.choice(_SUPPORT_ASKS).format(
        n0=nouns[0], n1=nouns[1], n2=nouns[2], num=f"#{rng.randint(100000, 999999)}"
    )
    if rng.random() < 0.2:
        text = rng.choice(("hello ", "Hi there, ", "urgent: ", "Good morning. ")) + text
    return sloppy(rng, text, 0.4)


def support_reply(rng: random.Random) -> str:
    return rng.choice(_SUPPORT_REPLIES)


# -- documents for batch jobs --------------------------------------------------------------------------------

_SUBJECTS = (
    "Cannot log in after password change",
    "Invoice shows wrong VAT",
    "Delivery left at wrong door",
    "Export to PDF is blank",
    "Request to close account",
    "App slow on older phones",
    "Duplicate charge on card",
    "Question about API rate limits",
)
_SENT = (
    "The customer says the problem started after the last update.",
    "They have already tried clearing the cache.",
    "This is the second time they have contacted us this week.",
    "They would like a callback before Friday.",
    "The order was placed on {day} and marked as delivered.",
    "Screenshots are attached to the ticket.",
    "An agent offered a partial refund, which the customer declined.",
    "The issue affects {n} of their users.",
    "Logs show repeated timeouts from the payment provider.",
    "The customer is on the annual plan.",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend")


def ticket(rng: random.Random) -> str:
    lines = [f"Ticket #{rng.randint(20000, 99999)}", f"Subject: {rng.choice(_SUBJECTS)}", ""]
    lines += [
        s.format(day=rng.choice(_DAYS), n=rng.randint(2, 40)) for s in rng.sample(_SENT, rng.randint(3, 5))
    ]
    return "\n".join(lines)


def log_excerpt(rng: random.Random) -> str:
    svcs = ("payments", "auth", "search", "checkout", "notifications", "reports")
    levels = ("INFO", "WARN", "ERROR")
    out = []
    for _ in range(rng.randint(5, 9)):
        m, s = rng.randint(0, 59), rng.randint(0, 59)
        svc = rng.choice(svcs)
        msg = rng.choice(
            (
                "request timed out after 30s",
                "retrying upstream call",
                "cache miss rate 41%",
                "connection pool exhausted",
                "job finished in 812 ms",
                "disk usage 87%",
            )
        )
        out.append(f"02:{m:02d}:{s:02d} {rng.choice(levels)} {svc} {msg}")
    return "\n".join(out)


def meeting_notes(rng: random.Random) -> str:
    people = rng.sample(words.FIRST, 3)
    items = rng.sample(
        (
            "launch date moved by one week",
            "budget for Q2 approved",
            "hire a second designer",
            "migrate the reports to the new database",
            "customer survey results are mixed",
            "security review before release",
            "reduce onboarding steps from five to three",
        ),
        3,
    )
    return "Attendees: " + ", ".join(p.title() for p in people) + "\n" + "\n".join(f"- {i}" for i in items)


def review(rng: random.Random) -> str:
    bits = rng.sample(words.REVIEW_BITS, rng.randint(1, 3))
    product = rng.choice(words.PRODUCTS)
    text = f"Bought the {product}. " + ". ".join(b.capitalize() for b in bits) + "."
    return sloppy(rng, text, 0.3)


# -- localisation strings ------------------------------------------------------------------------------------

_UI = (
    "Welcome back, {name}!",
    "Your order {order_id} has shipped.",
    "You have {count} unread messages.",
    "Save changes",
    "Are you sure you want to delete this file?",
    "Your session has expired. Please sign in again.",
    "Free shipping on orders over {amount}.",
    "<b>Tip:</b> you can drag files here to upload them.",
    "Password must be at least 8 characters.",
    "Invite your team",
    "Payment failed. Please try another card.",
    "{name} shared a folder with you.",
    "Download the receipt",
    "Your trial ends in {count} days.",
    "We couldn't find that page.",
    "Settings updated successfully.",
    "Choose a delivery slot",
)


def ui_string(rng: random.Random) -> str:
    return rng.choice(_UI)


# -- documentation search (RAG) ------------------------------------------------------------------------------


def rag_prompt(rng: random.Random, api: str, related: list[str], question: str) -> str:
    ctx = [
        f"[{i + 1}] {a} (module {module(a)}): reference entry, signature and notes."
        for i, a in enumerate([api, *related])
    ]
    return "Context:\n" + "\n".join(ctx) + f"\n\nQuestion: {question}"


_RAG_Q = (
    "how do I {task} with {api}?",
    "what does {api} return?",
    "{api} example",
    "difference between {api} and {api2}",
    "does {api} work on windows",
    "is {api} thread safe?",
    "what arguments does {api} take",
    "{api} vs {api2} which is faster",
    "why is {api} deprecated?",
    "can {api} raise an exception?",
)


def rag_question(rng: random.Random, api: str, api2: str) -> str:
    t = rng.choice(_RAG_Q).format(api=api, api2=api2, task=rng.choice(words.DEV_TASKS))
    return sloppy(rng, t, 0.5)


# -- evaluation items ----------------------------------------------------------------------------------------


def eval_item(rng: random.Random, api: str, others: list[str], fmt: str) -> str:
    """One benchmark item; ``fmt`` is "mc" (letter answer), "qa" (short answer) or "tf" (true/false)."""
    if fmt == "mc":
        options = [module(api)] + [module(o) for o in others if module(o) != module(api)][:3]
        while len(options) < 4:
            options.append(rng.choice(("builtins", "typing", "io", "abc", "enum", "types")))
        rng.shuffle(options)
        letters = "ABCD"
        body = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(options))
        return f"Question: Which module provides {leaf(api)}?\n{body}\nAnswer:"
    if fmt == "tf":
        claim = module(api) if rng.random() < 0.5 else module(rng.choice(others or [api]))
        return f"Statement: {leaf(api)} is defined in the {claim} module.\nTrue or False?\nAnswer:"
    if fmt == "math":
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        return f"Q: What is {a} + {b} * {c}?\nA:"
    return f"Q: In one sentence, what does the Python function {api} do?\nA:"


# -- prompt A/B tests ----------------------------------------------------------------------------------------

AB_VARIANTS = (
    "Write a product description for: {x}",
    "You are an experienced e-commerce copywriter. Write a compelling 60-word description of this "
    "product: {x}",
    "Describe the following product for an online store in three short sentences. Product: {x}",
    "Product: {x}\nTask: write a friendly description that mentions one practical use.",
    "Write a description of {x}. Avoid superlatives. Mention materials if relevant.",
    "Create an engaging listing text (max 50 words) for {x}.",
)


# -- consumer products built on the API ----------------------------------------------------------------------

WRAPPER_APPS = (
    (
        "You polish messages for busy professionals. Rewrite the user's text to be clear and {tone}. "
        "Keep the meaning and stay under 120 words.",
        "email",
    ),
    (
        "You are a cooking assistant. Suggest one recipe using the ingredients given. List steps briefly.",
        "recipe",
    ),
    ("You write short, honest cover letters. Use the details given; never invent qualifications.", "cover"),
    ("You turn study notes into five flashcards, each a question and a short answer.", "flashcards"),
)
_EMAILS = (
    "hey can u send me the report by tmrw thx",
    "I wont be able to make it to the meeting, something came up",
    "pls remind the team the office is closed monday",
    "we need to talk about the budget its way over",
    "sorry for late reply, been sick. will finish the slides today",
    "can we move our call to 3pm?",
)


def wrapper_input(rng: random.Random, app: str, pop_api: str) -> str:
    if app == "email":
        return rng.choice(_EMAILS)
    if app == "recipe":
        diet = rng.choice(("none", "vegetarian", "vegan", "low carb"))
        return f"Ingredients: {', '.join(rng.sample(words.FOODS, 3))}. Diet: {diet}"
    if app == "cover":
        role = rng.choice(
            ("junior data analyst", "barista", "nurse", "backend developer", "teaching assistant")
        )
        years, side = rng.randint(1, 8), rng.choice(words.HOBBY_THINGS)
        company = rng.choice(words.COMPANIES)
        return f"Role: {role} at {company}. Highlights: {years} years experience, {side} volunteer"
    topic = rng.choice(
        (
            f"Python: {pop_api} and how it is used",
            "the water cycle",
            "the causes of World War I",
            "cell division",
        )
    )
    return f"Notes on {topic}: definitions, one example, a common mistake."


# -- code completion in an editor ----------------------------------------------------------------------------


def code_prefix(rng: random.Random, api: str) -> str:
    fname = rng.choice(("load_config", "parse_rows", "main", "build_index", "save", "fetch_all", "clean"))
    arg = rng.choice(("path", "data", "items", "text", "args"))
    var = rng.choice(("result", "value", "out", "records", "x"))
    lead = rng.choice(("", "    # TODO: handle errors\n", "    logger.debug('start')\n"))
    top = f"import {module(api).split('.')[0]}\n"
    if rng.random() < 0.5:
        top += rng.choice(("import sys\n", "from typing import Any\n", "import logging\n"))
    return f"{top}\n\ndef {fname}({arg}):\n{lead}    {var} = {api}("


# -- hackathon projects --------------------------------------------------------------------------------------

_HACK = (
    "Write a system prompt for {project} that keeps answers short.",
    "Generate 5 example user messages someone might send to {project}.",
    "Give me a JSON schema for the data {project} needs to store.",
    "What's the fastest way to build a web UI for {project} in Python?",
    "Write a catchy one-line pitch for {project}.",
    "How do I {task}? Our demo is in 3 hours",
    "We're building {project} and it fails with {error}. What could cause it?",
    "Write the README intro for {project}.",
)


def hackathon(rng: random.Random, project: str) -> str:
    t = rng.choice(_HACK).format(
        project=project, task=rng.choice(words.DEV_TASKS), error=rng.choice(words.ERRORS)
    )
    return sloppy(rng, t, 0.5)
