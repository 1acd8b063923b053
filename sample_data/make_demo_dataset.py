"""Write the demo dataset: short factual questions answered in a fixed two-line format.

    ANSWER: <the answer>
    REASON: <one sentence>

The bundled SmolLM2-135M-Instruct never answers like this on its own, so a few
minutes of CPU training make a visible, checkable change. Run from the repo root:

    python sample_data/make_demo_dataset.py
"""

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Australia", "Canberra"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("Russia", "Moscow"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Cuba", "Havana"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Czechia", "Prague"),
    ("New Zealand", "Wellington"),
]
ELEMENTS = [
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"), ("sodium", "Na"),
    ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"), ("zinc", "Zn"), ("silver", "Ag"),
    ("tin", "Sn"), ("gold", "Au"), ("mercury", "Hg"), ("lead", "Pb"), ("uranium", "U"), ("neon", "Ne"),
    ("argon", "Ar"), ("lithium", "Li"), ("nickel", "Ni"), ("platinum", "Pt"), ("iodine", "I"),
]
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("early", "late"), ("light", "dark"), ("fast", "slow"), ("full", "empty"),
    ("open", "closed"), ("strong", "weak"), ("happy", "sad"), ("rich", "poor"), ("young", "old"),
    ("loud", "quiet"), ("wet", "dry"), ("hard", "soft"), ("thick", "thin"), ("begin", "end"), ("win", "lose"),
    ("push", "pull"), ("buy", "sell"), ("north", "south"), ("inside", "outside"), ("always", "never"),
    ("ancient", "modern"), ("arrive", "depart"), ("cheap", "expensive"), ("deep", "shallow"),
]
ANIMALS = [
    ("cow", "moos"), ("dog", "barks"), ("cat", "meows"), ("lion", "roars"), ("duck", "quacks"),
    ("horse", "neighs"), ("sheep", "bleats"), ("owl", "hoots"), ("snake", "hisses"), ("pig", "oinks"),
    ("frog", "croaks"), ("wolf", "howls"), ("bee", "buzzes"), ("donkey", "brays"), ("crow", "caws"),
]
CAPITAL_PROMPTS = ["What is the capital of {0}?", "Name the capital city of {0}.", "Which city is the capital of {0}?"]
ELEMENT_PROMPTS = ["What is the chemical symbol for {0}?", "Give the element symbol of {0}.",
                   "Which symbol stands for {0} on the periodic table?"]
OPPOSITE_PROMPTS = ["What is the opposite of '{0}'?", "Give an antonym of '{0}'.", "Which word means the opposite of '{0}'?"]
ANIMAL_PROMPTS = ["What sound does a {0} make?", "How would you describe the sound a {0} makes?"]


def _answer(short: str, reason: str) -> str:
    return f"ANSWER: {short}\nREASON: {reason}"


def build_rows(rng: random.Random) -> list[dict]:
    """Every demo question with its two-line answer."""
    rows = []
    for country, city in CAPITALS:
        rows.append({"instruction": rng.choice(CAPITAL_PROMPTS).format(country), "input": "",
                     "output": _answer(city, f"{city} is the seat of the national government of {country}.")})
    for name, symbol in ELEMENTS:
        rows.append({"instruction": rng.choice(ELEMENT_PROMPTS).format(name), "input": "",
                     "output": _answer(symbol, f"The periodic table writes {name} as {symbol}.")})
    for word, opposite in OPPOSITES:
        rows.append({"instruction": rng.choice(OPPOSITE_PROMPTS).format(word), "input": "",
                     "output": _answer(opposite, f"'{opposite}' means the reverse of '{word}'.")})
    for animal, sound in ANIMALS:
        rows.append({"instruction": rng.choice(ANIMAL_PROMPTS).format(animal), "input": "",
                     "output": _answer(f"It {sound}.", f"The usual call of a {animal} is described as it {sound}.")})
    for _ in range(40):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        rows.append({"instruction": "Compute this.", "input": f"{a} {op} {b}",
                     "output": _answer(str(value), f"{a} {word} {b} equals {value}.")})
    return rows


def main() -> None:
    rng = random.Random(7)
    rows = build_rows(rng)
    rng.shuffle(rows)
    held_out, train = rows[:24], rows[24:]
    folder = Path(__file__).parent
    with open(folder / "demo_train.jsonl", "w", encoding="utf-8") as handle:
        for row in train:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(folder / "demo_heldout.jsonl", "w", encoding="utf-8") as handle:
        for row in held_out:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} training rows and {len(held_out)} held-out rows")


if __name__ == "__main__":
    main()
