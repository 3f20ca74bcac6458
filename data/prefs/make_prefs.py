"""Writes the project's small helpfulness preference set (TRL conversational JSONL):

    python3 data/prefs/make_prefs.py      # writes data/prefs/train.jsonl and heldout.jsonl

Every prompt is a user question written here (facts, conversions, arithmetic, definitions,
how-tos, translations). `chosen` answers it correctly and helpfully; `rejected` is one of four
kinds of bad answer, picked with a fixed seed: an evasion, a wrong answer, a fluent answer to a
different question, or a curt non-answer. Every fifth prompt goes to the held-out split.
Standard library only; deterministic.
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("Russia", "Moscow"), ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Czechia", "Prague"), ("New Zealand", "Wellington"),
]

ELEMENTS = [
    ("hydrogen", "H", 1), ("helium", "He", 2), ("lithium", "Li", 3), ("carbon", "C", 6),
    ("nitrogen", "N", 7), ("oxygen", "O", 8), ("fluorine", "F", 9), ("neon", "Ne", 10),
    ("sodium", "Na", 11), ("magnesium", "Mg", 12), ("aluminium", "Al", 13), ("silicon", "Si", 14),
    ("phosphorus", "P", 15), ("sulfur", "S", 16), ("chlorine", "Cl", 17), ("argon", "Ar", 18),
    ("potassium", "K", 19), ("calcium", "Ca", 20), ("iron", "Fe", 26), ("copper", "Cu", 29),
    ("zinc", "Zn", 30), ("silver", "Ag", 47), ("tin", "Sn", 50), ("gold", "Au", 79),
    ("mercury", "Hg", 80), ("lead", "Pb", 82), ("uranium", "U", 92), ("nickel", "Ni", 28),
]

CONVERSIONS = [
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000),
    ("days", "hours", 24), ("weeks", "days", 7), ("feet", "inches", 12), ("yards", "feet", 3),
]

DEFINITIONS = [
    ("photosynthesis", "the process by which plants use sunlight, water and carbon dioxide to make sugar and release oxygen"),
    ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5 and 7"),
    ("gravity", "the force by which masses attract each other; on Earth it pulls objects toward the ground"),
    ("inflation", "a general rise in prices over time, which means money buys less than before"),
    ("an algorithm", "a finite sequence of well-defined steps for solving a problem or computing a result"),
    ("a noun", "a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'freedom'"),
    ("a verb", "a word that describes an action or state, such as 'run', 'think' or 'is'"),
    ("democracy", "a system of government in which citizens choose their leaders by voting"),
    ("evaporation", "the change of a liquid into a gas at its surface, as when a puddle dries in the sun"),
    ("a mammal", "a warm-blooded animal with hair that feeds its young on milk, such as a dog, a whale or a human"),
    ("an atom", "the smallest unit of a chemical element, made of a nucleus of protons and neutrons with electrons around it"),
    ("a metaphor", "a figure of speech that describes something as if it were something else, like 'time is a thief'"),
    ("erosion", "the gradual wearing away of rock or soil by water, wind or ice"),
    ("a budget", "a plan for how much money you expect to earn and spend over a period of time"),
    ("a vaccine", "a preparation that trains the immune system to recognise and fight a specific disease"),
    ("recycling", "collecting used materials such as paper, glass and metal so they can be made into new products"),
    ("a volcano", "an opening in the Earth's crust through which molten rock, ash and gases escape"),
    ("an ecosystem", "a community of living things interacting with each other and with their physical environment"),
    ("a fraction", "a number that represents part of a whole, written as one number over another, like 3/4"),
    ("a compiler", "a program that translates source code written in a programming language into machine code"),
    ("climate", "the average weather of a region measured over many years"),
    ("a synonym", "a word that means the same or nearly the same as another word, like 'big' and 'large'"),
    ("friction", "the force that resists motion when two surfaces rub against each other"),
    ("an interest rate", "the percentage a lender charges a borrower for the use of money over a year"),
    ("a haiku", "a short Japanese poem of three lines with five, seven and five syllables"),
    ("osmosis", "the movement of water through a membrane from a weaker solution to a stronger one"),
    ("a continent", "one of the Earth's seven large land masses, such as Africa, Asia or Europe"),
    ("a spreadsheet", "a program that organises data in rows and columns and can calculate with it"),
    ("biodiversity", "the variety of living species in a place or on the whole planet"),
    ("a password manager", "a program that stores your passwords in an encrypted vault so you only need to remember one"),
]

HOWTOS = [
    ("boil an egg", "Put the egg in a pot of boiling water for about 9 minutes for hard-boiled (6 for soft), then move it to cold water before peeling."),
    ("make a cup of tea", "Boil water, pour it over a tea bag in a cup, let it steep for 3 to 5 minutes, remove the bag, and add milk or sugar if you like."),
    ("tie a shoelace", "Cross the laces and tuck one under to make a knot, make a loop with one lace, wrap the other around it, and pull the second loop through."),
    ("change a flat tyre", "Loosen the wheel nuts, jack the car up, remove the nuts and the wheel, fit the spare, tighten the nuts by hand, lower the car and tighten them fully."),
    ("plant a tomato seedling", "Dig a hole deeper than the pot, bury the stem up to its first leaves, water it well, and give it a stake and a sunny spot."),
    ("remove a coffee stain", "Blot the stain, rinse it from the back with cold water, rub in a little liquid detergent, and wash the fabric as usual."),
    ("write a good email subject line", "Keep it short and specific, say what you need and by when, for example 'Review of Q3 report needed by Friday'."),
    ("start running as a beginner", "Alternate one minute of easy running with two minutes of walking for 20 minutes, three times a week, and slowly lengthen the running parts."),
    ("back up my phone", "Turn on the built-in cloud backup in your phone's settings, or connect it to a computer and copy your photos and files there regularly."),
    ("improve my sleep", "Go to bed and get up at the same times, keep the bedroom dark and cool, and avoid screens and caffeine in the evening."),
    ("save money on groceries", "Plan meals for the week, shop with a list, buy store brands and seasonal produce, and avoid shopping when hungry."),
    ("clean a cast iron pan", "Rinse it with hot water while warm, scrub with a brush or salt, dry it completely on the stove, and rub in a thin layer of oil."),
    ("learn a new language", "Practise a little every day, learn the most common words first, listen to native speakers, and speak from the start even with mistakes."),
    ("prepare for a job interview", "Research the company, prepare short stories about your past work, practise common questions aloud, and bring questions of your own."),
    ("make a simple budget", "List your monthly income, list fixed costs, set amounts for food and other spending, and put what remains toward savings."),
    ("keep basil alive", "Give it six hours of sun, water when the top of the soil is dry, and pinch off the flower buds so it keeps growing leaves."),
    ("unclog a sink", "Pour boiling water down the drain, then try a plunger; if that fails, clean the trap under the sink or use a drain snake."),
    ("take a screenshot on a computer", "On Windows press Windows+Shift+S; on a Mac press Command+Shift+4 and drag over the area you want."),
    ("memorise a speech", "Break it into sections, learn one section at a time, rehearse aloud, and use key words as cues rather than the full text."),
    ("reduce food waste", "Store food properly, use older items first, freeze leftovers, and plan meals around what you already have."),
]

TRANSLATIONS = [
    ("hello", "Spanish", "hola"), ("thank you", "French", "merci"), ("good morning", "German", "guten Morgen"),
    ("cat", "Spanish", "gato"), ("water", "French", "eau"), ("house", "German", "Haus"),
    ("friend", "Italian", "amico"), ("book", "Spanish", "libro"), ("goodbye", "Italian", "arrivederci"),
    ("bread", "French", "pain"), ("dog", "German", "Hund"), ("yes", "Japanese", "hai"),
    ("thank you", "Japanese", "arigatō"), ("please", "Spanish", "por favor"), ("apple", "German", "Apfel"),
    ("sun", "Italian", "sole"), ("moon", "French", "lune"), ("school", "Spanish", "escuela"),
    ("red", "Italian", "rosso"), ("night", "German", "Nacht"),
]

EVASIONS = [
    "I'm not sure. You could probably look that up somewhere.",
    "That's a good question, but I'd rather not get into it.",
    "It depends on a lot of things, so it's hard to say.",
    "I don't really know much about that, sorry.",
    "You should ask someone else about this.",
]

CURT = ["No idea.", "Whatever.", "Not my problem.", "Figure it out yourself.", "Why do you care?"]


def capitals(rng):
    other = [c for _, c in CAPITALS]
    for country, capital in CAPITALS:
        wrong = rng.choice([c for c in other if c != capital])
        yield (f"What is the capital of {country}?", f"The capital of {country} is {capital}.",
               f"The capital of {country} is {wrong}.")


def elements(rng):
    for name, symbol, number in ELEMENTS:
        wrong = rng.choice([s for _, s, _ in ELEMENTS if s != symbol])
        yield (f"What is the chemical symbol for {name}?",
               f"The chemical symbol for {name} is {symbol}; its atomic number is {number}.",
               f"The chemical symbol for {name} is {wrong}.")


def conversions(rng):
    for big, small, factor in CONVERSIONS:
        for amount in (3, 7, 12):
            right = amount * factor
            wrong = right + rng.choice([-factor, factor, 10, -10, 1])
            yield (f"How many {small} are there in {amount} {big}?",
                   f"There are {right} {small} in {amount} {big}, because each of the {big} has {factor} {small}.",
                   f"There are {wrong} {small} in {amount} {big}.")


def arithmetic(rng):
    for _ in range(36):
        a, b = rng.randint(3, 40), rng.randint(2, 12)
        right = a * b
        wrong = right + rng.choice([-b, b, -1, 1, 10])
        yield (f"A box holds {b} pencils. How many pencils are in {a} boxes?",
               f"{a} boxes with {b} pencils each hold {a} × {b} = {right} pencils.",
               f"{a} boxes hold {wrong} pencils.")


def definitions(rng):
    for term, meaning in DEFINITIONS:
        yield (f"What is {term}?", f"{term[0].upper() + term[1:]} is {meaning}.", None)


def howtos(rng):
    for task, steps in HOWTOS:
        yield (f"How do I {task}?", steps, None)


def translations(rng):
    for word, language, answer in TRANSLATIONS:
        wrong = rng.choice([t for _, _, t in TRANSLATIONS if t != answer])
        yield (f"How do you say '{word}' in {language}?", f"In {language}, '{word}' is '{answer}'.",
               f"In {language}, '{word}' is '{wrong}'.")


def main():
    rng = random.Random(20261124)
    items = []
    for make in (capitals, elements, conversions, arithmetic, definitions, howtos, translations):
        items.extend(make(rng))
    records = []
    for i, (question, good, wrong) in enumerate(items):
        kinds = ["evasion", "off_topic", "curt"] + (["wrong"] * 2 if wrong else [])
        kind = rng.choice(kinds)
        if kind == "evasion":
            bad = rng.choice(EVASIONS)
        elif kind == "curt":
            bad = rng.choice(CURT)
        elif kind == "wrong":
            bad = wrong
        else:
            bad = items[(i + rng.randint(1, len(items) - 1)) % len(items)][1]
        records.append({
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
            "kind": kind,
        })
    splits = {"train": [], "heldout": []}
    for i, r in enumerate(records):
        splits["heldout" if i % 5 == 4 else "train"].append(r)
    for name, rows in splits.items():
        with open(os.path.join(HERE, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print({k: len(v) for k, v in splits.items()})


if __name__ == "__main__":
    main()
