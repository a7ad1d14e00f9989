"""A DocRED submission for checking the official scorer: from gold documents, deterministic, with what
real systems produce: two thirds of the gold facts (some with their evidence, some with part of it, some
with none), wrong relations, swapped head and tail, and repeated facts."""


def submission(docs: list[dict]) -> list[dict]:
    out = []
    for d_i, d in enumerate(docs):
        for k, lab in enumerate(d["labels"]):
            fact = {"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"]}
            if k % 3 == 2:
                continue  # missed
            if k % 4 == 0:
                fact["evidence"] = list(lab["evidence"])
            elif k % 4 == 1:
                fact["evidence"] = list(lab["evidence"][:1]) + [99]
            out.append(fact)
            if k % 5 == 0:
                out.append(dict(fact))  # repeated
            if k % 3 == 1:
                out.append({"title": d["title"], "h_idx": lab["t"], "t_idx": lab["h"], "r": lab["r"]})  # swapped
            if k % 7 == 3:
                out.append({**fact, "r": "P17" if lab["r"] != "P17" else "P131"})  # wrong relation
    return out
