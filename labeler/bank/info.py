"""A readable summary of a prototype bank, with confusable class pairs."""

from __future__ import annotations

from dataclasses import dataclass

from labeler.bank.file import PrototypeBank
from labeler.io import markers

DEFAULT_CONFUSION_THRESHOLD = 0.8


@dataclass(frozen=True)
class ConfusablePair:
    """Two classes whose prototypes are close enough to be mixed up."""

    first: str
    second: str
    similarity: float


def confusable_pairs(bank: PrototypeBank, threshold: float = DEFAULT_CONFUSION_THRESHOLD) -> list[ConfusablePair]:
    """Class pairs with prototype cosine similarity at or above ``threshold``, most similar first."""
    similarity = bank.similarity()
    pairs = [
        ConfusablePair(bank.categories[i].name, bank.categories[j].name, float(similarity[i, j]))
        for i in range(len(bank.categories))
        for j in range(i + 1, len(bank.categories))
        if float(similarity[i, j]) >= threshold
    ]
    return sorted(pairs, key=lambda pair: -pair.similarity)


def describe_bank(bank: PrototypeBank, threshold: float = DEFAULT_CONFUSION_THRESHOLD) -> str:
    """Classes, shots (and negative references) per class, the similarity matrix and confusion warnings, as text."""
    shots = bank.shots_per_class()
    lines = [
        f"encoder        {bank.encoder} (D={bank.feature_dim}, input {bank.input_size}px)",
        f"context ratio  {bank.context_ratio}",
        f"sampling       {bank.sampling or 'all references'}",
        f"built by       labeler {bank.labeler_version}",
        f"content hash   {bank.content_hash}",
        "",
        f"{'id':>6}  {'class':<24} shots" + ("  negatives" if bank.has_negatives else ""),
    ]
    negatives = bank.negatives_per_class()
    lines += [f"{c.id:>6}  {c.name:<24} {shots[c.id]:>5}" + (f"  {negatives[c.id]:>9}" if bank.has_negatives else "")
              for c in bank.categories]
    lines += ["", "class prototype cosine similarity:"]
    width = max(6, max(len(c.name) for c in bank.categories))
    header = " " * (width + 2) + " ".join(f"{c.name[:6]:>6}" for c in bank.categories)
    lines.append(header)
    similarity = bank.similarity()
    for row, category in enumerate(bank.categories):
        values = " ".join(f"{float(similarity[row, col]):6.3f}" for col in range(len(bank.categories)))
        lines.append(f"{category.name:<{width}}  {values}")
    pairs = confusable_pairs(bank, threshold)
    if pairs:
        lines.append("")
        for pair in pairs:
            lines.append(
                f"warning: '{pair.first}' and '{pair.second}' have similar prototypes ({pair.similarity:.3f} >= "
                f"{threshold}); their detections may be confused: add distinctive shots or merge the classes"
            )
    return "\n".join(lines)


def plot_similarity(bank: PrototypeBank, path: str) -> None:
    """Draw the class prototype cosine-similarity matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in bank.categories]
    similarity = bank.similarity().numpy()
    size = max(4.0, 0.5 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(similarity, vmin=-1, vmax=1, cmap="RdBu_r")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                axes.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=8)
    axes.set_title(f"class prototype similarity ({bank.encoder})")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": markers.PLOT_SOFTWARE})
    plt.close(figure)
