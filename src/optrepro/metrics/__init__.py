"""Evaluation metrics shared by tasks: FID / Inception Score (fid), BLEU (bleu), VOC mAP (map).

Only the FID pieces are re-exported here; import the others from their modules."""

from optrepro.metrics.fid import (
    FeatureStats,
    InceptionFeatures,
    TinyFeatures,
    frechet_distance,
    inception_score,
    statistics_of,
)

__all__ = ["FeatureStats", "InceptionFeatures", "TinyFeatures", "frechet_distance", "inception_score", "statistics_of"]
