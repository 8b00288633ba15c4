"""Tasks for a real instruct model (e.g. SmolLM2-135M-Instruct, see `psft convert`), in the paper's setting.

- `word_math` (in-domain): seeded grade-school word problems of two steps, answered with a short worked
  solution ending in `\\boxed{N}`, the paper's answer format (its math system prompt asks for it).
- `trivia` (out-of-domain): everyday questions; right if the response names the answer (`mentions` checker),
  a measure of what fine-tuning makes the model forget.
- `instruct` (out-of-domain): IFEval-style format instructions on everyday questions (capital letters only,
  lowercase only, quotes, a fixed prefix, JSON, a word limit). The `instruction` checker verifies the
  instruction was followed, whatever the content, as IFEval's strict accuracy does. One deviation, kept so that
  every run of the SmolLM2 study is scored alike: a JSON reply must be the object itself with an "answer" key
  (the instruction names it); IFEval's JSON check also accepts a reply wrapped in a ``` fence and any key.
"""

from __future__ import annotations

import json
import random
import re

from psft.tasks.base import Example

BOXED = "Put your final answer within \\boxed{}."
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jade", "Kofi", "Lena")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def _buy_more(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    have, boxes, per_box = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 12)
    total = have + boxes * per_box
    prompt = f"{name} has {have} {item}. {name} buys {boxes} boxes with {per_box} {item} each. How many {item} does {name} have now?"
    steps = f"{boxes} boxes of {per_box} is {boxes}*{per_box}={boxes * per_box}. {have}+{boxes * per_box}={total}."
    return prompt, steps, total


def _give_away(rng: random.Random) -> tuple[str, str, int]:
    name, other, item = *rng.sample(_NAMES, 2), rng.choice(_ITEMS)
    gave, each_friend = rng.randint(2, 6), rng.randint(2, 8)
    left = rng.randint(1, 40)
    have = left + gave * each_friend
    prompt = f"{name} had {have} {item} and gave {each_friend} to each of {gave} friends, one of them {other}. How many {item} are left?"
    steps = f"{name} gave away {gave}*{each_friend}={gave * each_friend}. {have}-{gave * each_friend}={left}."
    return prompt, steps, left


def _share(rng: random.Random) -> tuple[str, str, int]:
    item = rng.choice(_ITEMS)
    people, each, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
    total = people * each
    prompt = f"{total} {item} are shared equally among {people} children. Each child then finds {extra} more. How many {item} does each child have?"
    steps = f"Each child gets {total}/{people}={each}. {each}+{extra}={each + extra}."
    return prompt, steps, each + extra


def _cost(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 15)
    cost = count * price
    paid = cost + rng.randint(1, 50)
    prompt = f"{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. How much change does {name} get?"
    steps = f"The {item} cost {count}*{price}={cost} dollars. {paid}-{cost}={paid - cost}."
    return prompt, steps, paid - cost


_PROBLEMS = (_buy_more, _give_away, _share, _cost)


def sample_word_math(rng: random.Random) -> Example:
    """A two-step word problem; the completion shows both steps and ends `The answer is \\boxed{N}.`."""
    prompt, steps, value = rng.choice(_PROBLEMS)(rng)
    completion = f"{steps} The answer is \\boxed{{{value}}}."
    return Example("word_math", f"{prompt} {BOXED}", completion, str(value), "math")


_QUESTIONS = (
    ("What is the capital of France?", "Paris"),
    ("Name a primary color.", "Red"),
    ("What do bees make?", "Honey"),
    ("Which planet do we live on?", "Earth"),
    ("What is frozen water called?", "Ice"),
    ("Name an animal that barks.", "Dog"),
    ("What is the opposite of hot?", "Cold"),
    ("Which season comes after winter?", "Spring"),
    ("What is the largest ocean?", "The Pacific Ocean"),
    ("What gas do plants take in?", "Carbon dioxide"),
    ("How many days are in a week?", "Seven"),
    ("What star is closest to Earth?", "The Sun"),
    ("What do cows drink?", "Water"),
    ("Name a fruit that is yellow.", "Banana"),
    ("What language is spoken in Spain?", "Spanish"),
    ("What is the boiling point of water in Celsius?", "100 degrees"),
    ("What is the color of grass?", "Green"),
    ("How many legs does a spider have?", "Eight"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What do you call a baby cat?", "A kitten"),
    ("Which month has the fewest days?", "February"),
    ("What is the tallest animal?", "The giraffe"),
    ("What do we call the meal eaten in the morning?", "Breakfast"),
    ("Which instrument has black and white keys?", "The piano"),
    ("What shape has three sides?", "A triangle"),
    ("What metal is liquid at room temperature?", "Mercury"),
    ("Which bird is a symbol of peace?", "The dove"),
    ("What is the freezing point of water in Celsius?", "Zero degrees"),
    ("Name a vegetable that is orange.", "Carrot"),
    ("What is the capital of Italy?", "Rome"),
    ("How many hours are in a day?", "Twenty-four"),
    ("What do caterpillars turn into?", "Butterflies"),
)
# ways to open the question, so the task has enough distinct prompts for its held-out split
_OPENINGS = (
    "",
    "Question: ",
    "Quick question. ",
    "Please help. ",
    "Hi! ",
    "Tell me: ",
    "I wonder. ",
    "Easy one. ",
    "Hello. ",
    "Here is a question. ",
    "Can you help? ",
    "Simple question: ",
)
_CLOSINGS = ("", " Be brief.", " Answer in one sentence.", " Thanks!", " Keep it short.")
# the accepted answers of a question with several right ones (any of them, as whole words, any case)
_ACCEPT = {
    "Red": "red|blue|yellow",
    "Dog": "dog|dogs|puppy",
    "Banana": "banana|bananas|lemon|lemons",
    "The Pacific Ocean": "pacific",
    "Seven": "seven|7",
    "Eight": "eight|8",
    "Twenty-four": "twenty-four|24",
    "100 degrees": "100",
    "Zero degrees": "zero|0",
    "Butterflies": "butterfly|butterflies|moth|moths",
    "A kitten": "kitten|kittens",
}

# constraint -> (instruction appended to the question, a compliant answer built from the plain one)
INSTRUCTIONS = {
    "uppercase": ("Answer in capital letters only.", lambda a: a.upper()),
    "lowercase": ("Answer in lowercase letters only.", lambda a: a.lower()),
    "quoted": ("Wrap your whole answer in double quotes.", lambda a: f'"{a}"'),
    "prefix": ("Start your answer with 'Answer:'.", lambda a: f"Answer: {a}"),
    "json": ('Reply with only a JSON object with the key "answer".', lambda a: json.dumps({"answer": a})),
    "max_words": ("Answer in at most three words.", lambda a: a),
}


def sample_trivia(rng: random.Random) -> Example:
    """An everyday question the base model should know; right if the response names the answer anywhere."""
    question, answer = rng.choice(_QUESTIONS)
    key = answer.removeprefix("The ").removeprefix("A ").lower()
    prompt = f"{rng.choice(_OPENINGS)}{question}{rng.choice(_CLOSINGS)}"
    return Example("trivia", prompt, f"{answer}.", _ACCEPT.get(answer, key), "mentions")


def mentions(completion: str, reference: str) -> bool:
    """One of the `|`-separated words or phrases of `reference` occurs in `completion` as whole words."""
    text = " ".join(re.findall(r"[a-z0-9-]+", completion.lower()))
    return any(f" {alt} " in f" {text} " for alt in reference.lower().split("|"))


def sample_instruct(rng: random.Random) -> Example:
    """An everyday question with one format instruction; the reference is the instruction's name."""
    question, answer = rng.choice(_QUESTIONS)
    constraint = rng.choice(sorted(INSTRUCTIONS))
    instruction, comply = INSTRUCTIONS[constraint]
    prompt = f"{rng.choice(_OPENINGS)}{question} {instruction}"
    return Example("instruct", prompt, comply(answer), constraint, "instruction")


def follows_instruction(completion: str, reference: str) -> bool:
    """Whether `completion` follows the instruction named by `reference` (a key of `INSTRUCTIONS`)."""
    text = completion.strip()
    letters = [c for c in text if c.isalpha()]
    if reference == "uppercase":
        return bool(letters) and all(c.isupper() for c in letters)
    if reference == "lowercase":
        return bool(letters) and all(c.islower() for c in letters)
    if reference == "quoted":
        return len(text) >= 3 and text[0] == text[-1] == '"'
    if reference == "prefix":
        return text.startswith("Answer:") and len(text) > len("Answer:")
    if reference == "json":
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and "answer" in value
    if reference == "max_words":
        return 1 <= len(text.split()) <= 3
    return False
