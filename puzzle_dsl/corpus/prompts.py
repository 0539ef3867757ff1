"""A built-in prompt set for sampling a distillation corpus from the parent (our own words).

Puzzle distils on text the parent itself produces (PUZZLE.md): the prompts only need to cover
many kinds of request (explanations, stories, questions, code, math, lists, advice) so the
parent's answers cover its usual behaviour. They are built combinatorially from short lists;
`builtin_prompts()` is deterministic.
"""

from __future__ import annotations

TOPICS = [
    "photosynthesis",
    "the water cycle",
    "volcanoes",
    "black holes",
    "the immune system",
    "electricity",
    "the French Revolution",
    "ancient Rome",
    "climate change",
    "honey bees",
    "the internet",
    "vaccines",
    "earthquakes",
    "the solar system",
    "gravity",
    "rainbows",
    "the printing press",
    "coral reefs",
    "money and banks",
    "recycling",
    "sleep",
    "the moon",
    "plate tectonics",
    "DNA",
    "bread baking",
    "chess",
    "the piano",
    "bicycles",
    "tides",
    "the human heart",
]

EXPLAIN = [
    "Explain {t} to a ten-year-old.",
    "Write a short paragraph about {t}.",
    "What are three interesting facts about {t}?",
    "Why is {t} important?",
    "Summarise what scientists know about {t} in a few sentences.",
    "Give a simple analogy that helps explain {t}.",
    "Write a quiz question about {t} and then answer it.",
]

STORY_OPENINGS = [
    "Once upon a time, in a village at the edge of a forest,",
    "The last train of the night pulled into the empty station and",
    "When Maya opened the old wooden box, she found",
    "The robot had never seen rain before, so",
    "On the first day of summer, the two brothers decided to",
    "The lighthouse keeper noticed a strange light on the water.",
    "Nobody in the town remembered who had planted the giant oak tree,",
    "The letter arrived fifty years late.",
    "Deep under the ocean, a small fish named Pip",
    "The market was loud and crowded when the old woman",
    "It was the coldest winter anyone could remember, and",
    "The spaceship's computer woke the crew with an alarm:",
]

STORY_TASKS = [
    "Continue this story: {s}",
    "Write a short story that begins: {s}",
]

QUESTIONS = [
    "What is the capital of Japan?",
    "How many legs does a spider have?",
    "Why do leaves change colour in autumn?",
    "What causes thunder?",
    "How do airplanes stay in the air?",
    "What is the difference between weather and climate?",
    "Why is the sea salty?",
    "How does a refrigerator keep food cold?",
    "What is the largest planet in the solar system?",
    "Who wrote Romeo and Juliet?",
    "Why do we have seasons?",
    "What is a prime number?",
    "How do magnets work?",
    "What do plants need to grow?",
    "Why does ice float on water?",
    "What is the boiling point of water in Fahrenheit?",
    "How do birds know where to migrate?",
    "What is the speed of light?",
    "Why is exercise good for the body?",
    "What language is spoken in Brazil?",
]

INSTRUCTIONS = [
    "Give me five tips for studying for an exam.",
    "Write a polite email asking for a day off.",
    "List the steps to plant a tomato seedling.",
    "Suggest a healthy breakfast for a busy morning.",
    "Write a haiku about the sea.",
    "Write a short poem about autumn leaves.",
    "Describe your ideal weekend in three sentences.",
    "Give advice to someone starting a new job.",
    "Write a thank-you note to a teacher.",
    "Plan a one-day trip to a city by the sea.",
    "Write a product description for a reusable water bottle.",
    "Explain how to make a cup of tea.",
    "Give three ideas for a rainy-day activity with kids.",
    "Write a short dialogue between a cat and a dog.",
    "Describe a sunset over the mountains.",
    "Write a recipe for a simple vegetable soup.",
    "Summarise the plot of Cinderella.",
    "Write a motivational message for a friend running a marathon.",
    "Rewrite this sentence more formally: gonna grab some food, brb.",
    "Translate into French: Good morning, how are you?",
]

CODE = [
    "Write a Python function that reverses a string.",
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain what a for loop does in Python, with an example.",
    "Write a JavaScript function that adds two numbers.",
    "Write a SQL query that selects all users older than 30.",
    "What is the difference between a list and a tuple in Python?",
    "Write a Python function that counts the vowels in a sentence.",
    "Write a Python class for a bank account with deposit and withdraw methods.",
    "Explain what recursion is and give a short example.",
    "Write a bash command that counts the lines in a file.",
    "Write a Python function that sorts a list of dictionaries by a key.",
]

MATH_TEMPLATES = [
    "What is {a} plus {b}?",
    "What is {a} times {b}?",
    "What is {c} minus {a}?",
    "A shop sells pencils for {a} cents each. How much do {b} pencils cost?",
    "If a train travels {c} kilometres in {b} hours, what is its average speed?",
    "Tom has {c} apples and gives away {a}. How many are left? Explain your steps.",
]

MATH_NUMBERS = [(3, 4, 12), (7, 8, 56), (12, 5, 60), (9, 6, 81), (15, 3, 45), (25, 4, 100)]


def builtin_prompts() -> list[str]:
    """Every built-in prompt, in a fixed order (a few hundred)."""
    out = [e.format(t=t) for t in TOPICS for e in EXPLAIN]
    out += [task.format(s=s) for s in STORY_OPENINGS for task in STORY_TASKS]
    out += QUESTIONS + INSTRUCTIONS + CODE
    out += [m.format(a=a, b=b, c=c) for a, b, c in MATH_NUMBERS for m in MATH_TEMPLATES]
    return out
