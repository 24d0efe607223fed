"""Seeded generator of arithmetic word problems for the bundled data (stdlib only).

Each template returns ``(prompt, working, answer)``: ``working`` shows short steps and contains
the placeholder ``{ans}`` wherever the final result appears, always as its last number. The chosen
response fills in the right answer, the rejected one a plausible wrong answer, so the pair differs
only in the final number.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Problem = tuple[str, str, int]

NAMES = [
    ("Maria", "she"),
    ("Tom", "he"),
    ("Aisha", "she"),
    ("Leo", "he"),
    ("Priya", "she"),
    ("Kenji", "he"),
    ("Nora", "she"),
    ("Sam", "he"),
]
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("ticket", "tickets"), ("mug", "mugs")]
SHARED = ["sweets", "stickers", "marbles", "grapes"]
FRUIT = ["apples", "oranges", "eggs", "biscuits"]


def fmt(n: int) -> str:
    """``n`` with thousands commas, as written in the responses (``4730`` -> ``4,730``)."""
    return f"{n:,}"


def _add2(r: random.Random) -> Problem:
    a, b = r.randint(12, 499), r.randint(12, 499)
    q = r.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Calculate {a} plus {b}."])
    end = r.choice(["The answer is {ans}.", "So the sum is {ans}."])
    return q.format(a=a, b=b), f"Adding them: {a} + {b} = {{ans}}. " + end, a + b


def _sub(r: random.Random) -> Problem:
    a = r.randint(60, 900)
    b = r.randint(11, a - 10)
    q = r.choice(["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"])
    return q.format(a=a, b=b), f"Taking {b} away from {a}: {a} - {b} = {{ans}}.", a - b


def _mul(r: random.Random) -> Problem:
    a, b = r.randint(3, 25), r.randint(6, 25)
    q = r.choice(["What is {a} × {b}?", "Multiply {a} by {b}.", "What is {a} times {b}?"])
    return q.format(a=a, b=b), f"Multiplying: {a} × {b} = {{ans}}. The product is {{ans}}.", a * b


def _div(r: random.Random) -> Problem:
    b, ans = r.randint(3, 12), r.randint(6, 40)
    q = r.choice(["What is {p} divided by {b}?", "Divide {p} by {b}.", "What is {p} ÷ {b}?"])
    return q.format(p=b * ans, b=b), f"{b * ans} ÷ {b} = {{ans}}, so the answer is {{ans}}.", ans


def _add3(r: random.Random) -> Problem:
    a, b, c = r.randint(10, 99), r.randint(10, 99), r.randint(10, 99)
    q = r.choice(["Add {a}, {b} and {c}.", "What is {a} + {b} + {c}?"]).format(a=a, b=b, c=c)
    return (
        q,
        f"First {a} + {b} = {a + b}, then {a + b} + {c} = {{ans}}. The sum is {{ans}}.",
        a + b + c,
    )


def _fruit(r: random.Random) -> Problem:
    (name, he), thing = r.choice(NAMES), r.choice(FRUIT)
    a, b = r.randint(5, 30), r.randint(3, 20)
    c = r.randint(2, a + b - 2)
    q = (
        f"{name} has {a} {thing}, buys {b} more and then gives away {c}. "
        f"How many {thing} does {he} have now?"
    )
    work = (
        f"{a} + {b} = {a + b}, and {a + b} - {c} = {{ans}}. {he.capitalize()} has {{ans}} {thing}."
    )
    return q, work, a + b - c


def _price(r: random.Random) -> Problem:
    (one, many), p, n = r.choice(ITEMS), r.randint(2, 15), r.randint(3, 12)
    q = f"One {one} costs ${p}. How much do {n} {many} cost altogether?"
    return q, f"{n} × ${p} = ${{ans}}. Together they cost ${{ans}}.", n * p


def _speed(r: random.Random) -> Problem:
    v, h = r.choice([40, 45, 50, 60, 70, 80, 90, 120]), r.randint(2, 6)
    vehicle = r.choice(["car", "train", "coach", "lorry"])
    q = f"A {vehicle} travels at {v} km per hour for {h} hours. How far does it go?"
    return q, f"Distance is speed × time: {v} × {h} = {{ans}}. It travels {{ans}} km.", v * h


def _minutes(r: random.Random) -> Problem:
    h = r.randint(2, 30)
    q = r.choice(["How many minutes are in {h} hours?", "Convert {h} hours to minutes."])
    return q.format(h=h), f"Each hour has 60 minutes, so {h} × 60 = {{ans}} minutes.", h * 60


def _percent(r: random.Random) -> Problem:
    p = r.choice([5, 10, 20, 25, 50, 75])
    n = (100 // {5: 5, 10: 10, 20: 20, 25: 25, 50: 50, 75: 25}[p]) * r.randint(2, 40)
    q = r.choice(["What is {p}% of {n}?", "Find {p} percent of {n}."]).format(p=p, n=n)
    return q, f"{p}% of {n} is {n} × {p} / 100 = {{ans}}. The answer is {{ans}}.", n * p // 100


def _share(r: random.Random) -> Problem:
    k, each, thing = r.randint(3, 9), r.randint(3, 15), r.choice(SHARED)
    n = k * each
    q = f"{n} {thing} are shared equally among {k} children. How many does each child get?"
    return q, f"{n} ÷ {k} = {{ans}}, so each child gets {{ans}} {thing}.", each


def _area(r: random.Random) -> Problem:
    w, length = r.randint(3, 20), r.randint(4, 30)
    q = f"A rectangular garden is {w} m wide and {length} m long. What is its area?"
    work = f"Area = width × length = {w} × {length} = {{ans}}. The area is {{ans}} square metres."
    return q, work, w * length


def _change(r: random.Random) -> Problem:
    x = r.choice([20, 50, 100])
    y = r.randint(3, x - 2)
    thing = r.choice(["a book", "a lamp", "a pair of socks", "a board game", "a plant"])
    q = f"You buy {thing} for ${y} and pay with a ${x} note. How much change do you get?"
    return q, f"Change = {x} - {y} = {{ans}}. You get ${{ans}} back.", x - y


def _pages(r: random.Random) -> Problem:
    (name, _), per, days = r.choice(NAMES), r.choice([10, 12, 15, 20, 25, 30]), r.randint(4, 20)
    q = (
        f"A book has {per * days} pages and {name} reads {per} pages a day. "
        "How many days will it take to finish?"
    )
    return q, f"{per * days} ÷ {per} = {{ans}}. It will take {{ans}} days.", days


def _big_add(r: random.Random) -> Problem:
    a, b = r.randint(1000, 9999), r.randint(1000, 9999)
    q = r.choice(["What is {a} + {b}?", "Add {a} and {b}."]).format(a=fmt(a), b=fmt(b))
    return q, f"{fmt(a)} + {fmt(b)} = {{ans}}. The total is {{ans}}.", a + b


def _age(r: random.Random) -> Problem:
    (name, he), a, d, y = r.choice(NAMES), r.randint(5, 40), r.randint(2, 9), r.randint(2, 15)
    his = "her" if he == "she" else "his"
    q = (
        f"{name} is {a} years old and {his} cousin is {d} years older. "
        f"How old will the cousin be in {y} years?"
    )
    work = f"The cousin is {a} + {d} = {a + d} now. In {y} years: {a + d} + {y} = {{ans}}."
    return q, work, a + d + y


def _savings(r: random.Random) -> Problem:
    s, w = r.choice([5, 8, 10, 12, 15, 20, 25]), r.randint(4, 30)
    q = f"If you save ${s} every week, how much will you have saved after {w} weeks?"
    return q, f"{s} × {w} = {{ans}}, so you will have ${{ans}}.", s * w


def _perimeter(r: random.Random) -> Problem:
    s = r.randint(3, 60)
    q = f"What is the perimeter of a square with sides of {s} cm?"
    return (
        q,
        f"A square has 4 equal sides, so 4 × {s} = {{ans}}. The perimeter is {{ans}} cm.",
        4 * s,
    )


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    _add2,
    _sub,
    _mul,
    _div,
    _add3,
    _fruit,
    _price,
    _speed,
    _minutes,
    _percent,
    _share,
    _area,
    _change,
    _pages,
    _big_add,
    _age,
    _savings,
    _perimeter,
]


def wrong_answer(r: random.Random, ans: int, working: str) -> int:
    """A plausible wrong result: off by one, two, ten or a hundred, never ``ans`` or an operand."""
    offsets = [1, 2, 10, -1, -2, -10, 9, 11] + ([100, -100] if ans > 300 else [])
    operands = {w.strip(".,$") for w in working.replace("{ans}", " ").split()}
    for _ in range(100):
        cand = ans + r.choice(offsets)
        if cand > 0 and cand != ans and fmt(cand) not in operands and str(cand) not in operands:
            return cand
    raise RuntimeError(f"no wrong answer found for {ans}")  # pragma: no cover


def arithmetic_problems(r: random.Random, count: int) -> list[tuple[str, str, str, int, int]]:
    """``count`` unique problems as ``(prompt, chosen, rejected, answer, wrong)``."""
    out: list[tuple[str, str, str, int, int]] = []
    seen: set[str] = set()
    i = 0
    while len(out) < count:
        prompt, working, ans = TEMPLATES[i % len(TEMPLATES)](r)
        i += 1
        operands = {w.strip(".,$") for w in working.replace("{ans}", " ").split()}
        if prompt in seen or fmt(ans) in operands or str(ans) in operands:
            i -= 1  # retry the same template with fresh numbers
            continue
        seen.add(prompt)
        wrong = wrong_answer(r, ans, working)
        chosen = working.replace("{ans}", fmt(ans))
        rejected = working.replace("{ans}", fmt(wrong))
        out.append((prompt, chosen, rejected, ans, wrong))
    return out
