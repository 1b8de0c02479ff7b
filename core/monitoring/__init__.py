"""Monitoring: drift of inputs and scores over time, and the lineage of every shipped model.

- ``drift_report`` / ``drift_over_time``: PSI and two-sample KS per feature against a reference,
  with ``DriftThresholds`` deciding ``ok`` / ``warn`` / ``alert`` (rule in ``drift``'s docstring).
- ``read_lineage`` / ``list_lineage`` / ``lineage_table``: which data, code, config and metrics made
  each model folder under ``models/`` (from its ``model_card.json``).
"""

from core.monitoring.drift import (
    EPSILON,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    drift_over_time,
    drift_report,
    feature_drift,
    psi,
    psi_p_value,
)
from core.monitoring.lineage import ModelLineage, lineage_table, list_lineage, read_lineage

__all__ = [
    "EPSILON",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "ModelLineage",
    "drift_over_time",
    "drift_report",
    "feature_drift",
    "lineage_table",
    "list_lineage",
    "psi",
    "psi_p_value",
    "read_lineage",
]
