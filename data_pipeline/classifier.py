"""The quality classifier: a scikit-learn random forest on text embeddings.

`train_classifier` fits it on the embeddings of an annotated sample and reports held-out
precision/recall; `select` scores and thresholds the rest (`positive_scores`: P(positive) per
row); `save_classifier`/`load_classifier` move it between stages, locally or on gs://.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import joblib
import numpy as np
import sklearn
from etils import epath
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import train_test_split

from phi_jax import files


def train_classifier(
  embeddings: np.ndarray,
  labels: Sequence[bool] | np.ndarray,
  seed: int = 0,
  holdout_fraction: float = 0.2,
  *,
  n_estimators: int = 200,
  max_depth: int | None = None,
  min_samples_leaf: int = 1,
  max_features: str | float | int | None = "sqrt",
  class_weight: str | None = None,
  n_jobs: int | None = 1,
) -> tuple[Any, dict]:
  """(RandomForestClassifier fitted on the training split, held-out report).

  The split is stratified by label (when each class has >= 2 members) and deterministic in
  `seed`. The report: precision, recall, f1 and accuracy of the positive class on the held-out
  split (threshold 0.5 on the forest's probability), n_train, n_heldout, positive_rate (of all
  labels), heldout_positive_rate and predicted_positive_rate. The classifier is not refitted on
  the held-out part, so the report describes exactly the model returned.
  """
  x = np.asarray(embeddings, np.float32)
  y = np.asarray(labels).astype(bool)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"embeddings {x.shape} and labels {y.shape} do not match")
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
  counts = np.bincount(y.astype(int), minlength=2)
  stratify = y if counts.min() >= 2 else None
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=holdout_fraction, random_state=seed, stratify=stratify
  )
  classifier = RandomForestClassifier(
    n_estimators=n_estimators,
    max_depth=max_depth,
    min_samples_leaf=min_samples_leaf,
    max_features=max_features,
    class_weight=class_weight,
    n_jobs=n_jobs,
    random_state=seed,
  )
  classifier.fit(x_train, y_train)
  _, predicted = select(classifier, x_test, 0.5)
  predicted = predicted >= 0.5
  report = {
    "precision": float(precision_score(y_test, predicted, zero_division=0)),
    "recall": float(recall_score(y_test, predicted, zero_division=0)),
    "f1": float(f1_score(y_test, predicted, zero_division=0)),
    "accuracy": float(accuracy_score(y_test, predicted)),
    "n_train": int(len(y_train)),
    "n_heldout": int(len(y_test)),
    "positive_rate": float(y.mean()),
    "heldout_positive_rate": float(y_test.mean()),
    "predicted_positive_rate": float(predicted.mean()),
    "seed": seed,
    "n_estimators": n_estimators,
  }
  return classifier, report


def positive_scores(classifier: Any, embeddings: np.ndarray) -> np.ndarray:
  """The classifier's probability of the positive class (label True/1) per row."""
  x = np.asarray(embeddings, np.float32)
  if x.ndim == 1:
    x = x[None]
  classes = list(classifier.classes_)
  probabilities = classifier.predict_proba(x)
  positive = [i for i, c in enumerate(classes) if bool(c)]
  if not positive:  # trained on negatives only
    return np.zeros(len(x), np.float64)
  return probabilities[:, positive[0]].astype(np.float64)


def select(
  classifier: Any, embeddings: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
  """(keep mask = score >= threshold, scores): scores are P(positive) per row."""
  scores = positive_scores(classifier, embeddings)
  return scores >= threshold, scores


def save_classifier(path: epath.PathLike, classifier: Any, report: Mapping | None = None) -> None:
  """Writes {classifier, report, versions} with joblib, locally or remotely (gs://...); the
  file appears only once complete (`phi_jax.files.write_atomic`)."""
  bundle = {
    "format": 1,
    "classifier": classifier,
    "report": dict(report or {}),
    "sklearn_version": sklearn.__version__,
  }
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  joblib.dump(bundle, buffer)
  files.write_atomic(path, buffer.getvalue())


def load_classifier(path: epath.PathLike) -> tuple[Any, dict]:
  """(classifier, report) saved by `save_classifier` (local or remote path).

  joblib files are pickles: load only files you trust.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no quality classifier at {path}")
  bundle = joblib.load(io.BytesIO(path.read_bytes()))
  if not isinstance(bundle, dict) or bundle.get("format") != 1:
    raise ValueError(f"{path} is not a classifier written by save_classifier")
  return bundle["classifier"], bundle["report"]
