"""Throughput of the rule-based CheXpert labeler on one core.

Builds N synthetic reports (3-8 sentences drawn from realistic MIMIC-CXR-style phrasings, fixed seed), labels them
and prints reports per second, next to a same-run baseline: lower-casing, sentence splitting and one pass of a
single regex made of every mention phrase (the least any regex labeler must do). Also times ``ce_scores`` on N/2
report pairs.

Usage::

    python benchmarks/bench_chexpert.py [--reports 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import re
import time

from monai_r2gen.metrics.chexpert import _GENERIC, _OTHER_FINDINGS, _SPECIFIC, CheXpertLabeler
from monai_r2gen.metrics.clinical import ce_scores

SENTENCES = [
    "The heart size is normal.",
    "Heart size is mildly enlarged.",
    "Mild cardiomegaly is unchanged.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Stable cardiomediastinal silhouette.",
    "No pleural effusion or pneumothorax.",
    "No focal consolidation, pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Moderate bilateral pleural effusions have slightly increased.",
    "Blunting of the right costophrenic angle.",
    "Lungs are clear.",
    "Patchy opacity in the right lower lobe concerning for pneumonia.",
    "Bibasilar opacities likely reflect atelectasis.",
    "Pulmonary vascular congestion without frank edema.",
    "Mild interstitial pulmonary edema.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Right PICC line tip in the mid SVC.",
    "The nasogastric tube has been removed.",
    "Left chest tube remains in place; no pneumothorax.",
    "Pneumothorax cannot be excluded.",
    "Right upper lobe nodule measuring 1.2 cm.",
    "Healed left rib fractures.",
    "No acute osseous abnormality.",
    "Degenerative changes of the thoracic spine.",
    "No acute cardiopulmonary process.",
    "Atelectasis versus consolidation at the left base.",
    "Interval resolution of the right lower lobe pneumonia.",
    "Calcified granuloma in the left upper lobe.",
]


def make_reports(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, rng.randint(3, 8))) for _ in range(n)]


def baseline(reports: list[str]) -> int:
    phrases = [p for ps in list(_SPECIFIC.values()) + list(_GENERIC.values()) for p in ps] + _OTHER_FINDINGS
    scan = re.compile(r"\b(?:" + "|".join(sorted(phrases, key=len, reverse=True)) + ")")
    split = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?]")
    hits = 0
    for text in reports:
        for sentence in split.split(text.lower()):
            hits += len(scan.findall(sentence))
    return hits


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reports = make_reports(args.reports, args.seed)
    labeler = CheXpertLabeler()
    labeler.label(reports[0])  # warm-up

    t_base, _ = timed(baseline, reports)
    t_label, labels = timed(labeler.label_many, reports)
    half = len(reports) // 2
    t_ce, scores = timed(ce_scores, reports[:half], reports[half : 2 * half])

    n = len(reports)
    print(f"reports: {n} (seed {args.seed}), mean length {sum(len(r) for r in reports) / n:.0f} characters")
    print(f"baseline (split + one mention regex): {t_base:7.2f} s  {n / t_base:9.0f} reports/s")
    print(f"CheXpertLabeler.label_many:           {t_label:7.2f} s  {n / t_label:9.0f} reports/s")
    print(f"ratio labeler / baseline time:        {t_label / t_base:7.1f}x")
    print(f"ce_scores on {half} pairs:            {t_ce:7.2f} s  (CE-14 micro-F1 {scores['CE-14 micro-F1']:.3f})")
    positives = sum(1 for row in labels for v in row.values() if v == 1.0)
    print(f"positive labels: {positives} ({positives / n:.2f} per report)")


if __name__ == "__main__":
    main()
