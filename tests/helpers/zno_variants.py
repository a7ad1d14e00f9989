"""Answers for checking exam points against NLPForUA/ZNO's scoring (tuning/tools/scoring.py): for each
question, model text in the forms that script reads ("Відповідь: ..." with the letters in row order)."""


def variants(correct: list[str], letters: list[str]) -> dict[str, str]:
    wrong = [next(x for x in letters if x != c) for c in correct]
    half = len(correct) // 2 or 1
    return {
        "right": "Відповідь: " + ", ".join(f"{i}-{c}" for i, c in enumerate(correct, 1)) if len(correct) > 1
        else f"Відповідь: {correct[0]}",
        "wrong": "Відповідь: " + ", ".join(f"{i}-{c}" for i, c in enumerate(wrong, 1)) if len(correct) > 1
        else f"Відповідь: {wrong[0]}",
        "one_off": "Відповідь: " + ", ".join(f"{i}-{c}" for i, c in enumerate(correct[:-1] + wrong[-1:], 1))
        if len(correct) > 1 else f"Відповідь: {correct[0]}",
        "first_rows": "Відповідь: " + ", ".join(f"{i}-{c}" for i, c in enumerate(correct[:half], 1))
        if len(correct) > 1 else f"Відповідь: {wrong[0]}",
    }
