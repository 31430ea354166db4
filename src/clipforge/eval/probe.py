"""Linear-probe and k-shot evaluation: logistic regression on frozen, standardised features, with
the L2 strength chosen on a validation split (as the paper's probes did), never on the test set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CS = tuple(10.0 ** np.arange(-3, 2.5, 1))  # inverse L2 strengths swept


def _fit(x: np.ndarray, y: np.ndarray, C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000).fit(x, y)


def _prep(train: torch.Tensor, test: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise, then standardise with the training features' statistics (fast, well-conditioned fits)."""
    from sklearn.preprocessing import StandardScaler

    tr, te = F.normalize(train.float(), dim=-1).numpy(), F.normalize(test.float(), dim=-1).numpy()
    scaler = StandardScaler().fit(tr)
    return scaler.transform(tr), scaler.transform(te)


def _sweep(xtr: np.ndarray, ytr: np.ndarray, xval: np.ndarray, yval: np.ndarray, Cs) -> float:
    scores = [(_fit(xtr, ytr, C).score(xval, yval), -abs(np.log10(C))) for C in Cs]
    return Cs[max(range(len(Cs)), key=lambda i: scores[i])]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    val_fraction: float = 0.2,
    seed: int = 0,
    Cs=DEFAULT_CS,
) -> dict[str, float]:
    """Sweep C on a validation part of the training features, refit on all of them, score the test set."""
    (xtr, xte), ytr, yte = _prep(train_x, test_x), train_y.numpy(), test_y.numpy()
    order = np.random.default_rng(seed).permutation(len(ytr))
    cut = int(len(order) * (1 - val_fraction))
    C = _sweep(xtr[order[:cut]], ytr[order[:cut]], xtr[order[cut:]], ytr[order[cut:]], Cs)
    clf = _fit(xtr, ytr, C)
    return {"top1": float(clf.score(xte, yte)), "C": float(C), "train_samples": int(len(ytr))}


def few_shot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks=(1, 2, 4, 8, 16),
    seeds: int = 3,
    Cs=DEFAULT_CS,
) -> dict[str, dict[str, float]]:
    """k examples per class drawn from the training features (several seeds); C chosen on the
    remaining training features; mean and std of test accuracy over seeds."""
    (xtr, xte), ytr, yte = _prep(train_x, test_x), train_y.numpy(), test_y.numpy()
    classes = np.unique(ytr)
    out = {}
    for k in ks:
        accs = []
        for s in range(seeds):
            rng = np.random.default_rng(1000 * k + s)
            pick = np.concatenate(
                [
                    rng.choice(np.flatnonzero(ytr == c), size=min(k, int((ytr == c).sum())), replace=False)
                    for c in classes
                ]
            )
            rest = np.setdiff1d(np.arange(len(ytr)), pick)
            # no examples left to validate on (k covers the whole training set): use C = 1
            C = _sweep(xtr[pick], ytr[pick], xtr[rest], ytr[rest], Cs) if len(rest) else 1.0
            accs.append(_fit(xtr[pick], ytr[pick], C).score(xte, yte))
        out[f"{k}-shot"] = {"top1": float(np.mean(accs)), "std": float(np.std(accs)), "seeds": seeds}
    return out
