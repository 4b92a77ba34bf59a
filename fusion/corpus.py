"""Customer-service sentences for projector training: slot-filled templates and a hand-written
free-form evaluation list.

Templates alone teach a projector the templates, not the speech (the Fusion issue measured ~89 %
WER on free-form sentences after training on 380 templated ones), so the templates here are many,
their slots large, and `fusion.speech_data` adds sentences written by the LLM itself. Numbers are
spelled out: a transcript writes "20" for "twenty", which word error rate would count as wrong.
"""

from __future__ import annotations

import random
import re

SLOTS: dict[str, tuple[str, ...]] = {
    "item": (
        "blender", "laptop", "phone case", "winter coat", "pair of boots", "coffee machine", "desk lamp",
        "gaming chair", "toaster", "vacuum cleaner", "set of towels", "bike helmet", "backpack", "printer",
        "wireless speaker", "rug", "mattress", "baby stroller", "kettle", "microwave", "dining table",
        "bookshelf", "tent", "sleeping bag", "garden hose", "drill", "smart watch", "tablet", "camera",
        "pair of headphones", "keyboard", "monitor", "router", "hair dryer", "frying pan", "knife set",
        "jacket", "dress", "pair of jeans", "sweater", "scarf", "wallet", "handbag", "suitcase",
        "perfume", "shampoo", "face cream", "board game", "puzzle", "guitar", "yoga mat", "treadmill",
        "office chair", "sofa", "curtains", "pillow", "duvet", "ceiling fan", "heater", "air purifier",
        "dishwasher", "fridge", "washing machine", "electric toothbrush", "phone charger", "gift card",
        "birthday cake", "flower bouquet", "dog bed", "cat tree", "fish tank", "plant pot", "umbrella",
    ),
    "problem": (
        "arrived broken", "stopped working after a week", "is missing a part", "came in the wrong colour",
        "is the wrong size", "smells strange", "makes a loud noise", "will not turn on", "was scratched",
        "looks used", "has a crack in it", "leaks water", "keeps overheating", "does not match the photos",
        "is much smaller than described", "was delivered without instructions", "keeps disconnecting",
        "has a faulty battery", "was dented on one side", "arrived soaking wet", "is not what I ordered",
    ),
    "when": (
        "yesterday", "this morning", "last week", "two days ago", "on Monday", "on Tuesday", "on Wednesday",
        "on Thursday", "on Friday", "over the weekend", "last month", "three weeks ago", "a few hours ago",
        "earlier today", "last night", "on Saturday", "on Sunday", "ten days ago", "at the start of the month",
    ),
    "future": (
        "tomorrow", "next week", "on Friday", "this afternoon", "before the weekend", "by Monday",
        "next month", "as soon as possible", "tomorrow morning", "later today", "in the next few days",
        "before Christmas", "by the end of the week", "next Tuesday", "on Thursday evening",
    ),
    "name": (
        "Sarah", "James", "Maria", "David", "Aisha", "Tom", "Olivia", "Mohammed", "Grace", "Daniel",
        "Chloe", "Lucas", "Emma", "Noah", "Priya", "Ben", "Hannah", "Leo", "Fatima", "Jack", "Sofia",
        "Ethan", "Zoe", "Samuel", "Isabel", "Oscar", "Nina", "Adam", "Julia", "Peter",
    ),
    "place": (
        "my neighbour's house", "the front door", "the back garden", "the wrong flat", "the post office",
        "the reception desk", "my office", "a parcel locker", "the corner shop", "the garage",
        "the building next door", "my parents' house", "the porch", "the mail room", "the side gate",
    ),
    "city": (
        "London", "Manchester", "Dublin", "Paris", "Berlin", "Madrid", "Chicago", "Boston", "Toronto",
        "Sydney", "Edinburgh", "Glasgow", "Bristol", "Leeds", "Seattle", "Denver", "Vienna", "Lisbon",
    ),
    "amount": (
        "twenty pounds", "fifty dollars", "a hundred euros", "thirty five pounds", "twelve dollars",
        "nine ninety nine", "two hundred pounds", "eighty euros", "fifteen dollars", "sixty pounds",
        "forty nine dollars", "seventy five euros", "three hundred dollars", "eleven pounds",
    ),
    "appointment": (
        "installation visit", "repair appointment", "consultation", "eye test", "haircut",
        "dental check up", "service appointment", "fitting", "delivery slot", "video call",
        "home visit", "engineer visit", "test drive", "training session", "follow up call",
    ),
    "account": (
        "password", "email address", "phone number", "home address", "payment card", "username",
        "delivery address", "billing address", "marketing preferences", "security question",
        "profile picture", "two factor settings", "notification settings", "date of birth",
    ),
    "channel": ("email", "text message", "phone call", "letter", "the app", "live chat", "the website"),
    "feeling": (
        "really disappointed", "quite frustrated", "very happy", "a bit confused", "honestly shocked",
        "rather annoyed", "extremely grateful", "pretty worried", "completely fed up", "pleasantly surprised",
    ),
    "plan": (
        "premium plan", "basic plan", "family plan", "annual subscription", "monthly subscription",
        "student plan", "business account", "free trial", "loyalty membership", "gold membership",
    ),
    "colour": ("black", "white", "red", "blue", "green", "grey", "pink", "yellow", "silver", "navy"),
    "courier": ("the courier", "the driver", "the delivery company", "the postman", "your warehouse"),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "orders": (
        "I ordered a {item} {when} and it still has not arrived.",
        "Can you tell me where my {item} is?",
        "I would like to cancel the order for the {item}.",
        "Is it possible to change my order from a {item} to a {colour} one?",
        "My order for a {item} shows as shipped but I have no tracking information.",
        "I placed two orders {when} and only one of them came through.",
        "Could you add a {item} to the order I placed {when}?",
        "Why was my order for the {item} cancelled without any warning?",
        "I accidentally ordered the {item} twice, can you cancel one of them?",
        "Has my order been dispatched yet, I need the {item} {future}.",
    ),
    "refunds": (
        "I returned the {item} {when} and I am still waiting for my refund.",
        "The {item} {problem}, so I would like my money back.",
        "How long does a refund usually take to reach my card?",
        "You refunded {amount} but I paid much more than that.",
        "Can I get a refund instead of a replacement for the {item}?",
        "I was told I would get {amount} back but nothing has come through.",
        "My {item} {problem} and I want a full refund please.",
        "Please send me a return label for the {item}.",
        "I am {feeling} that my refund was refused.",
        "Can I return the {item} to a shop in {city} instead of posting it?",
    ),
    "delivery": (
        "The parcel was left at {place} and I cannot find it.",
        "{courier} said they tried to deliver {when} but nobody knocked.",
        "Can I change the delivery date to {future}?",
        "My {item} was delivered to {place} instead of my address.",
        "Is there any way to get the {item} delivered {future}?",
        "The tracking page has not updated since {when}.",
        "I moved to {city}, can you redirect my parcel?",
        "{courier} left the {item} outside in the rain.",
        "The box was crushed and the {item} {problem}.",
        "Do you deliver to {city} on weekends?",
        "I have been waiting for my delivery since {when}.",
    ),
    "accounts": (
        "I cannot log in to my account since {when}.",
        "How do I change my {account}?",
        "Someone changed my {account} without my permission.",
        "I never received the {channel} to reset my password.",
        "Please close my account and delete my data.",
        "My account was locked {when} and I do not know why.",
        "Can you update my {account} before my next order?",
        "I would like to merge my two accounts into one.",
        "Why do I keep getting a {channel} asking me to verify my {account}?",
        "My name is {name} and I need help with my {account}.",
    ),
    "billing": (
        "I was charged {amount} twice for the same order.",
        "Why is my bill {amount} higher this month?",
        "Please cancel my {plan} before the next payment.",
        "I want to switch from the {plan} to the {plan2}.",
        "My card was declined but the money still left my account.",
        "Can I pay for the {item} in instalments?",
        "I did not sign up for the {plan}, so why am I being charged?",
        "Could you send me an invoice for the {item} by {channel}?",
        "The discount code did not work when I paid {when}.",
        "I am {feeling} about the extra charge of {amount}.",
    ),
    "appointments": (
        "I would like to book a {appointment} for {future}.",
        "Can I move my {appointment} to {future}?",
        "I need to cancel the {appointment} I booked {when}.",
        "Nobody turned up for my {appointment} {when}.",
        "Is there a {appointment} available in {city} {future}?",
        "Could {name} call me to confirm the {appointment}?",
        "What time is my {appointment} {future}?",
        "I missed my {appointment} {when}, can I rebook it?",
    ),
    "products": (
        "Does the {item} come in {colour}?",
        "Is the {item} back in stock yet?",
        "How long is the warranty on the {item}?",
        "Can you recommend a {item} for a small flat?",
        "What is the difference between the {colour} {item} and the {colour2} one?",
        "Is the {item} suitable for children?",
        "My {item} {problem}, is that covered by the warranty?",
        "Do you sell spare parts for the {item}?",
        "How do I clean the {item} without damaging it?",
        "Will the {item} be on sale {future}?",
    ),
    "general": (
        "Hi, my name is {name} and I am calling about my {item}.",
        "I have already contacted you by {channel} three times about this.",
        "Can I speak to a manager about my {item}, please?",
        "I am {feeling} with the service I received {when}.",
        "Thank you, {name} was really helpful on the phone {when}.",
        "Could you send me the details by {channel}?",
        "I have been a customer for years and this has never happened before.",
        "Please call me back {future}, I am at work right now.",
        "The agent I spoke to {when} promised a call back that never came.",
        "I just wanted to say the {item} is brilliant, thank you.",
    ),
}

# Hand-written, varied customer sentences that no template or generator prompt produced: the
# free-form held-out set. Several stray far from the template domains on purpose.
FREEFORM_SENTENCES: tuple[str, ...] = (
    "Honestly, I just want someone to tell me whether my package is lost or not.",
    "The app crashes every single time I try to open my basket.",
    "My grandmother got a letter from you saying she owes money, which cannot be right.",
    "We are hosting a wedding on Saturday and the chairs we rented never showed up.",
    "Is anyone actually reading these messages, or am I talking to a machine?",
    "I think my neighbour took my parcel by mistake, what should I do?",
    "The instructions are written in a language I do not understand.",
    "Could you explain why the price went up right after I added it to my cart?",
    "My son spent a lot of money in your game without asking me first.",
    "The lady in the shop was lovely, please pass on my thanks.",
    "I booked a table for four people but the restaurant had no record of it.",
    "The heating engineer left mud all over my kitchen floor.",
    "I am travelling abroad next month, will my card still work there?",
    "Somebody opened the box before it reached me, the tape had been cut.",
    "Your website says open until eight, but the doors were locked at six.",
    "My flight was cancelled and the airline told me to contact you instead.",
    "The bananas in my grocery order were completely black.",
    "Why do I need to give you my date of birth just to buy a lamp?",
    "I would like to donate the unwanted furniture rather than throw it away.",
    "The sleeve of the shirt ripped the first time I wore it.",
    "Please stop sending me catalogues, I have asked so many times.",
    "My internet has been painfully slow every evening this week.",
    "Can the driver ring the bell instead of leaving a card?",
    "I signed up for the newsletter and now I get spam from other companies.",
    "The puppy food you delivered has a best before date from last year.",
    "Our office printer keeps jamming with the paper you sold us.",
    "I want to know what happens to my personal data after I close the account.",
    "The hotel room smelled of smoke even though we asked for a non smoking one.",
    "Could you wrap it as a present and include a short message?",
    "My insurance claim has been pending for over two months.",
    "The train tickets I bought online never arrived in my inbox.",
    "I am blind, is there an easier way to fill in this form?",
    "The paint colour looks nothing like the sample on the tin.",
    "We need twenty extra meals for the school trip on Friday.",
    "The locksmith charged me far more than the quote on the phone.",
    "My bicycle was stolen from your car park while I was shopping.",
    "Is it normal for a new fridge to hum this loudly at night?",
    "I would love to work for your company, who should I send my details to?",
    "The concert was postponed, can I still use my tickets on the new date?",
    "The gardener you sent cut down the wrong tree.",
)

_SLOT_RE = re.compile(r"\{(\w+?)(2?)\}")


def fill(template: str, rng: random.Random) -> str:
    """Fill each `{slot}` (and a distinct `{slot2}`) in `template` from SLOTS."""
    chosen: dict[str, str] = {}

    def pick(match: re.Match) -> str:
        slot, second = match.group(1), match.group(2)
        options = SLOTS[slot]
        if second:
            value = rng.choice([o for o in options if o != chosen.get(slot)])
        else:
            value = rng.choice(options)
            chosen[slot] = value
        return value

    text = _SLOT_RE.sub(pick, template)
    return text[0].upper() + text[1:]


def split_templates(seed: int, per_domain: int = 1) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(training templates, held-out templates): `per_domain` whole templates of each domain held out,
    drawn by `seed`. No sentence filled from a held-out template is ever trained on."""
    rng = random.Random(seed)
    train: dict[str, tuple[str, ...]] = {}
    heldout: dict[str, tuple[str, ...]] = {}
    for domain in sorted(TEMPLATES):
        chosen = set(rng.sample(range(len(TEMPLATES[domain])), per_domain))
        heldout[domain] = tuple(t for i, t in enumerate(TEMPLATES[domain]) if i in chosen)
        train[domain] = tuple(t for i, t in enumerate(TEMPLATES[domain]) if i not in chosen)
    return train, heldout


def template_sentences(count: int, seed: int, templates: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, str]]:
    """`count` distinct (domain, sentence) pairs from `templates` (default: all), domains round-robin;
    deterministic given `seed`."""
    rng = random.Random(seed)
    templates = TEMPLATES if templates is None else templates
    domains = sorted(templates)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    attempts = 0
    max_attempts = count * 50  # guards against asking for more than the slots can produce
    while len(out) < count:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"could only produce {len(out)} distinct template sentences, asked for {count}")
        domain = domains[len(out) % len(domains)]
        sentence = fill(rng.choice(templates[domain]), rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append((domain, sentence))
    return out


# English prose that installs offline: sentences from the Python standard library's docstrings.
# Technical, but with a vocabulary and sentence shapes no customer template has — breadth is what
# lets the projector carry speech rather than memorise templates.
_PROSE_RE = re.compile(r"^[A-Z][A-Za-z ,'-]*[a-z][.?!]$")
PROSE_MIN_WORDS, PROSE_MAX_WORDS = 5, 18


def prose_sentences(count: int, seed: int) -> list[str]:
    """Up to `count` distinct speakable sentences from the stdlib's docstrings, sampled by `seed`."""
    import ast
    import sysconfig
    from pathlib import Path

    if count <= 0:  # parsing the stdlib takes seconds
        return []
    found: set[str] = set()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for sentence in re.split(r"(?<=[.?!])\s+", " ".join(doc.split())):
                if _PROSE_RE.match(sentence) and PROSE_MIN_WORDS <= len(sentence.split()) <= PROSE_MAX_WORDS:
                    found.add(sentence)
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    return ordered[:count]
