"""Label issues found during one BalanceMix training: which given labels are wrong.

BalanceMix decides, label by label, at every epoch-end refresh of its engine
(:meth:`~balancemix_timm.engine.BalanceMix.refresh`), whether a given label is clean
(Eq. 6-8: a per-(class, polarity) Gaussian mixture on the loss), re-labeled (Eq. 9: the mean of
two augmented views is confidently on one side) or ambiguous. This module turns that state into
the answer of a data-cleaning tool, shaped like cleanlab's multi-label API so that one can be
swapped for the other:

* :func:`label_quality_scores` ``(source, method=...)``: an (N, K) score per label, like
  cleanlab's ``multilabel_classification.rank.get_label_quality_scores_per_class`` (K arrays
  of (N,) there).
* :func:`find_label_issues` ``(source, return_indices_ranked_by=..., filter_by=...)``: an
  (N, K) bool mask or ranked (image, class) pairs, like cleanlab's
  ``multilabel_classification.filter.find_label_issues`` (which flags whole images).
* :func:`describe_label_issues`: the given and suggested label of each flagged pair.
* :func:`write_label_issues`: the flagged labels as a CSV file (a run's ``label_issues.csv``).

Differences from cleanlab: the input is not ``(labels, pred_probs)`` but a ``source`` that
holds BalanceMix's state (a live engine, a run folder, a checkpoint; see
:func:`load_label_state`), no cross-validation is needed, and the unit of an issue is one
(image, class) label rather than one image, so the mask is (N, K) and the ranked indices are
(image, class) pairs.

Every score is in [0, 1]; 1 means "the given label is surely right", low values mean "likely
wrong" (cleanlab's convention). With ``p_G`` the clean probability of Eq. 8 and ``p`` the mean
sigmoid probability of the class over the augmented views last recorded for the image:

* ``"self_confidence"``: ``sc = p`` where the given label is 1 and ``1 - p`` where it is 0, the
  probability the model gives to the given value (cleanlab's per-class self-confidence).
* ``"clean_probability"``: ``p_G``, the posterior of the low-loss component of the label's
  (class, polarity) mixture.
* ``"balancemix"`` (default): ``p_G + (1 - p_G) * sc``: the label is right if it is clean, or,
  failing that, with the probability the views give its value, which is how the engine itself
  treats a label (Eq. 9 consults the views only for labels that are not clean).

The refined label of Eq. 9 is the views' probability thresholded at ``eps``, so it enters the
scores through ``sc``; the ``filter_by="label_state"`` filter uses the engine's decision itself.
Images that were never recorded (``seen`` False) have no view probability: every score is 1
for their labels and they are never flagged.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .models.checkpoints import ML_DECODER_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_FORMAT, check_checkpoint_format
from .refine import LabelState
from .textfiles import atomic_write, write_text

__all__ = [
    "FILTER_BY",
    "LabelIssueState",
    "RANKED_BY",
    "SCORE_METHODS",
    "describe_label_issues",
    "find_label_issues",
    "label_quality_scores",
    "load_label_state",
    "write_label_issues",
]

_logger = logging.getLogger(__name__)

#: Methods of :func:`label_quality_scores` (also the values of ``return_indices_ranked_by``).
SCORE_METHODS = ("balancemix", "clean_probability", "self_confidence")
#: Values of ``return_indices_ranked_by`` other than ``None``.
RANKED_BY = SCORE_METHODS
#: Values of ``filter_by`` of :func:`find_label_issues`.
FILTER_BY = ("label_state", "relabeled", "threshold", "both")

_RUN_FILES = ("last.pth", "balancemix-last.pth")


@dataclass(frozen=True)
class LabelIssueState:
    """BalanceMix's per-label state as NumPy arrays on the host (what every source becomes).

    Attributes:
        given_labels: (N, K) uint8, the labels the data set gives (possibly noisy).
        clean_prob: (N, K) float32 in [0, 1], ``p_G`` of Eq. 8 (1 for never-recorded images).
        pred_probs: (N, K) float32 in [0, 1], the engine's recorded f(x) (``probs``, the input of
            the GMMs' losses, Eq. 6): the un-augmented image's sigmoid probability, or the mean
            over the augmented views with ``confidence_input="views"``; the last record of each
            image (0.5 placeholder where ``seen`` is False). cleanlab's ``pred_probs``.
        view_mean: (N, K) float32 in [0, 1], the recorded mean of the augmented views'
            probabilities that Eq. 9 re-labels from (``view_mean``; 0.5 where not ``seen``).
        refined_labels: (N, K) uint8, the labels after Eq. 9.
        states: (N, K) int8 :class:`~balancemix_timm.refine.LabelState` values (0 clean,
            1 re-labeled, 2 ambiguous).
        seen: (N,) bool, whether the image has a recorded view probability.
        epoch: The epoch whose refresh produced the state (0-based).
        eps: The re-labeling threshold of Eq. 9 the engine used.
        clean_threshold: ``p_G`` above which the engine calls a label clean.
        label_management: The engine's level (``"none"``, ``"clean"``, ``"relabel"``, ``"full"``).
        origin: Where the state came from (for messages).
    """

    given_labels: np.ndarray
    clean_prob: np.ndarray
    pred_probs: np.ndarray
    view_mean: np.ndarray
    refined_labels: np.ndarray
    states: np.ndarray
    seen: np.ndarray
    epoch: int
    eps: float
    clean_threshold: float
    label_management: str
    origin: str

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K): images and classes."""
        return tuple(self.given_labels.shape)  # type: ignore[return-value]

    @property
    def changed(self) -> np.ndarray:
        """(N, K) bool: labels Eq. 9 re-labeled to the other value."""
        return (self.states == int(LabelState.RELABELED)) & (self.refined_labels != self.given_labels)


# ---------------------------------------------------------------------------- loading
def load_label_state(source: Any, *, weights_only: bool = True) -> LabelIssueState:
    """Turn any supported source into one :class:`LabelIssueState`.

    Args:
        source: One of

            * a live :class:`~balancemix_timm.engine.BalanceMixEngine` engine, or an object holding one
              as ``.engine`` (the ML-Decoder ``BalanceMixPlugin``, the trainer's
              ``BalanceMixMethod``), after at least one :meth:`refresh`;
            * a ``balancemix-train`` run folder (its ``last.pth``) or the ML-Decoder plugin's
              checkpoint folder (its ``balancemix-last.pth``);
            * a checkpoint file of either (``last.pth``, ``balancemix-last.pth``);
            * an already loaded checkpoint, plugin state or engine ``state_dict()`` (a mapping);
            * a :class:`LabelIssueState` (returned as is).
        weights_only: Load checkpoint files with ``torch.load(weights_only=True)`` (NumPy's
            random-state arrays of ``last.pth`` are allowed explicitly). ``False`` unpickles
            arbitrary objects: only for files you trust.

    Returns:
        The state, with host NumPy arrays.

    Raises:
        ValueError: naming ``source`` for anything else, for a folder with no checkpoint, for a
            checkpoint that holds no BalanceMix engine, or for an engine (or engine state)
            that was never refreshed (it has no clean probabilities yet).
    """
    if isinstance(source, LabelIssueState):
        return source
    from .engine import BalanceMixEngine

    engine = source if isinstance(source, BalanceMixEngine) else getattr(source, "engine", None)
    if isinstance(engine, BalanceMixEngine):
        return _from_engine_state(engine.state_dict(), f"engine {type(source).__name__}")
    if isinstance(source, (str, os.PathLike)):
        path = _checkpoint_path(Path(source))
        return _from_mapping(_load(path, weights_only), str(path))
    if isinstance(source, Mapping):
        return _from_mapping(source, "mapping")
    raise ValueError(
        "source must be a BalanceMix engine (or an object with one as .engine), a run folder, a "
        f"checkpoint path, a loaded checkpoint or a LabelIssueState; got {type(source).__name__}"
    )


def _checkpoint_path(path: Path) -> Path:
    if path.is_dir():
        for name in _RUN_FILES:
            if (path / name).is_file():
                return path / name
        raise ValueError(f"source folder {path} holds no checkpoint ({' or '.join(_RUN_FILES)})")
    if not path.is_file():
        raise ValueError(f"source {path} is neither a run folder nor a checkpoint file")
    return path


def _load(path: Path, weights_only: bool) -> Any:
    if not weights_only:
        _logger.warning("loading %s with weights_only=False (arbitrary objects are unpickled)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    core = getattr(np, "_core", None) or np.core  # NumPy 2 / 1
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of several kinds
        raise ValueError(
            f"source {path} cannot be read with torch.load(weights_only=True) ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0][:200]}); if you trust the file, pass "
            "load_label_state(path, weights_only=False) as the source"
        ) from None


def _from_mapping(ckpt: Mapping[str, Any], origin: str) -> LabelIssueState:
    fmt = ckpt.get("format")
    if isinstance(fmt, str) and fmt.split("/")[0] in ("balancemix-timm", "balancemix-ml-decoder"):
        expected = TRAIN_CHECKPOINT_FORMAT if fmt.startswith("balancemix-timm/") else ML_DECODER_CHECKPOINT_FORMAT
        check_checkpoint_format(ckpt, expected, f"source {origin}", what="BalanceMix checkpoint")
    if fmt == TRAIN_CHECKPOINT_FORMAT:
        method = ckpt.get("method")
        engine = method.get("engine") if isinstance(method, Mapping) else None
        if engine is None:
            raise ValueError(
                f"source {origin} is a balancemix-train checkpoint of method "
                f"{ckpt.get('config', {}).get('method')!r}, which keeps no BalanceMix engine"
            )
        return _from_engine_state(engine, origin)
    if fmt == ML_DECODER_CHECKPOINT_FORMAT or "balancemix" in ckpt:
        plugin = ckpt.get("balancemix")
        if not isinstance(plugin, Mapping) or "engine" not in plugin:
            raise ValueError(f"source {origin} holds no BalanceMix plugin state")
        return _from_engine_state(plugin["engine"], origin)
    if "engine" in ckpt and isinstance(ckpt["engine"], Mapping):  # plugin.state_dict()
        return _from_engine_state(ckpt["engine"], origin)
    if "given_labels" in ckpt and "clean_prob" in ckpt:  # engine.state_dict()
        return _from_engine_state(ckpt, origin)
    raise ValueError(
        f"source {origin} is not a BalanceMix checkpoint or engine state (format {fmt!r}, keys "
        f"{sorted(map(str, ckpt))[:8]})"
    )


def _from_engine_state(sd: Mapping[str, Any], origin: str) -> LabelIssueState:
    missing = [k for k in ("given_labels", "refined_labels", "state", "clean_prob", "probs", "view_mean", "seen")
               if k not in sd]
    if missing:
        raise ValueError(f"source {origin}: the engine state lacks {missing}")
    if not sd.get("history"):
        raise ValueError(
            f"source {origin}: the engine was never refreshed (no clean probabilities yet); call "
            "engine.refresh() at an epoch end first"
        )
    cfg = dict(sd.get("config", {}))

    def arr(key: str, dtype: Any) -> np.ndarray:
        return torch.as_tensor(sd[key]).detach().cpu().numpy().astype(dtype, copy=True)

    state = LabelIssueState(
        given_labels=arr("given_labels", np.uint8),
        clean_prob=arr("clean_prob", np.float32),
        pred_probs=arr("probs", np.float32),
        view_mean=arr("view_mean", np.float32),
        refined_labels=arr("refined_labels", np.uint8),
        states=arr("state", np.int8),
        seen=arr("seen", bool),
        epoch=int(sd.get("history")[-1].get("epoch", sd.get("epoch", 0))),
        eps=float(cfg.get("eps", float("nan"))),
        clean_threshold=float(cfg.get("clean_threshold", 0.5)),
        label_management=str(cfg.get("label_management", "full")),
        origin=origin,
    )
    n_k = state.given_labels.shape
    for name in ("clean_prob", "pred_probs", "view_mean", "refined_labels", "states"):
        if getattr(state, name).shape != n_k:
            raise ValueError(f"source {origin}: {name} is {getattr(state, name).shape}, given labels {n_k}")
    if state.label_management == "none":
        _logger.warning(
            "source %s: label_management='none', so every clean probability is 1 and no label is "
            "flagged; only method='self_confidence' is informative", origin,
        )
    return state


# ---------------------------------------------------------------------------- scores
def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _scores(st: LabelIssueState, method: str) -> np.ndarray:
    p = st.pred_probs.astype(np.float64)
    given = st.given_labels.astype(bool)
    if method == "self_confidence":
        s = np.where(given, p, 1.0 - p)
    elif method == "clean_probability":
        s = st.clean_prob.astype(np.float64)
    else:  # balancemix
        pg = st.clean_prob.astype(np.float64)
        s = pg + (1.0 - pg) * np.where(given, p, 1.0 - p)
    s = np.where(st.seen[:, None], s, 1.0)
    return np.clip(s, 0.0, 1.0)


def label_quality_scores(source: Any, *, method: str = "balancemix") -> np.ndarray:
    """A score per (image, class) label: how likely the given label is right.

    The per-label counterpart of cleanlab's
    ``multilabel_classification.rank.get_label_quality_scores_per_class`` (which returns K
    arrays of (N,); here one (N, K) array).

    Args:
        source: Anything :func:`load_label_state` accepts (engine, run folder, checkpoint, ...).
        method: With ``p`` the model's probability of the class for the image, f(x) as the GMMs
            saw it (the engine's ``probs``: the un-augmented image, or the mean of the augmented
            views with ``confidence_input="views"``) and ``p_G`` the clean probability of Eq. 8:

            * ``"balancemix"`` (default): ``p_G + (1 - p_G) * sc``, the probability that the
              label is clean, plus, where it is not, the model's probability of the given value.
            * ``"clean_probability"``: ``p_G``, the posterior of the low-loss component of the
              Gaussian mixture fitted to the BCE losses of the label's class and polarity.
            * ``"self_confidence"``: ``sc = p`` if the given label is 1 else ``1 - p``, the
              probability the model gives to the given value.

    Returns:
        (N, K) float64 array in [0, 1] (a probability, no unit): 1 = the given label is surely
        right, near 0 = surely wrong. Labels of images never recorded score 1.

    Raises:
        ValueError: for an unsupported ``source`` or ``method`` (the message names it).
    """
    _check_choice(method, "method", SCORE_METHODS)
    return _scores(load_label_state(source), method)


def _issue_mask(st: LabelIssueState, filter_by: str, threshold: float, scores: np.ndarray) -> np.ndarray:
    by_state = st.changed | (st.states == int(LabelState.AMBIGUOUS))
    if filter_by == "label_state":
        mask = by_state
    elif filter_by == "relabeled":
        mask = st.changed
    elif filter_by == "threshold":
        mask = scores < threshold
    else:  # both
        mask = by_state & (scores < threshold)
    return mask & st.seen[:, None]


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return t


def _ranked(mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    n_idx, k_idx = np.nonzero(mask)  # row-major order: ties keep (image, class) order
    order = np.argsort(scores[n_idx, k_idx], kind="stable")
    return np.stack([n_idx[order], k_idx[order]], axis=1).astype(np.int64).reshape(-1, 2)


def find_label_issues(
    source: Any,
    *,
    return_indices_ranked_by: str | None = None,
    filter_by: str = "label_state",
    threshold: float = 0.5,
    score_method: str = "balancemix",
) -> np.ndarray:
    """The given labels BalanceMix judges wrong, as a mask or as ranked (image, class) pairs.

    Shaped like cleanlab's ``multilabel_classification.filter.find_label_issues`` (which flags
    images; here each (image, class) label is flagged on its own).

    Args:
        source: Anything :func:`load_label_state` accepts (engine, run folder, checkpoint, ...).
        return_indices_ranked_by: ``None`` returns the (N, K) mask; one of
            :data:`SCORE_METHODS` (``"balancemix"``, ``"clean_probability"``,
            ``"self_confidence"``) returns the flagged labels as pairs sorted by that score,
            lowest (most likely wrong) first; ties keep (image, class) order.
        filter_by: Which labels are flagged:

            * ``"label_state"`` (default): the engine's own decision at its last refresh: the
              label was re-labeled to the other value by Eq. 9, or judged ambiguous (neither
              clean nor confidently re-labeled). Labels re-labeled to their own value are
              confirmed by the views and not flagged.
            * ``"relabeled"``: only labels Eq. 9 re-labeled to the other value (the engine's
              confident corrections; fewest, most precise).
            * ``"threshold"``: labels whose ``score_method`` score is below ``threshold``.
            * ``"both"``: ``"label_state"`` and ``"threshold"`` together (intersection).
        threshold: Score below which ``"threshold"`` / ``"both"`` flag a label, in [0, 1].
        score_method: The score ``"threshold"`` / ``"both"`` compare (see
            :func:`label_quality_scores`).

    Returns:
        ``return_indices_ranked_by=None``: (N, K) bool array, True = the given label is judged
        wrong. Otherwise: (M, 2) int64 array of (image index, class index) rows, the M flagged
        labels from most to least likely wrong; ``mask[pairs[:, 0], pairs[:, 1]]`` is all True
        and M equals ``mask.sum()``. See :func:`describe_label_issues` for the given and
        suggested labels of each pair.

    Raises:
        ValueError: for an unsupported ``source``, ``return_indices_ranked_by``, ``filter_by``,
            ``threshold`` or ``score_method`` (the message names the argument).
    """
    if return_indices_ranked_by is not None:
        _check_choice(return_indices_ranked_by, "return_indices_ranked_by", RANKED_BY)
    _check_choice(filter_by, "filter_by", FILTER_BY)
    _check_choice(score_method, "score_method", SCORE_METHODS)
    threshold = _check_threshold(threshold)
    st = load_label_state(source)
    mask = _issue_mask(st, filter_by, threshold, _scores(st, score_method))
    _logger.info("find_label_issues(%s, filter_by=%s): %d of %d labels flagged",
                 st.origin, filter_by, int(mask.sum()), mask.size)
    if return_indices_ranked_by is None:
        return mask
    return _ranked(mask, _scores(st, return_indices_ranked_by))


def describe_label_issues(
    source: Any,
    indices: np.ndarray | None = None,
    *,
    ranked_by: str = "balancemix",
    filter_by: str = "label_state",
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Given and suggested label of each label issue, as columns of equal length M.

    Args:
        source: Anything :func:`load_label_state` accepts.
        indices: (M, 2) (image index, class index) pairs, e.g. from :func:`find_label_issues`;
            default: ``find_label_issues(source, return_indices_ranked_by=ranked_by,
            filter_by=filter_by, threshold=threshold)``.
        ranked_by: Score for the default ``indices`` and for the ``quality`` column.
        filter_by: Filter of the default ``indices`` (see :func:`find_label_issues`).
        threshold: Threshold of the default ``indices``.

    Returns:
        A pandas-free table: a dict of (M,) arrays, in the order of ``indices``:
        ``image_index``, ``class_index`` (int64); ``given`` and ``suggested`` (uint8);
        ``state`` (int8 :class:`~balancemix_timm.refine.LabelState`); ``clean_prob``,
        ``pred_prob`` (f(x)), ``view_mean`` (Eq. 9's mean of the views), ``quality`` (float64 in
        [0, 1]). ``suggested`` is the refined label of Eq. 9 for re-labeled labels and otherwise
        the model's vote (1 if ``pred_prob > 0.5``); it may equal ``given``.
        ``pandas.DataFrame(result)`` makes it a data frame.

    Raises:
        ValueError: for an unsupported ``source`` or option, or ``indices`` that are not (M, 2)
            integers inside (N, K).
    """
    _check_choice(ranked_by, "ranked_by", SCORE_METHODS)
    st = load_label_state(source)
    if indices is None:
        indices = find_label_issues(st, return_indices_ranked_by=ranked_by, filter_by=filter_by, threshold=threshold)
    idx = np.asarray(indices)
    n, k = st.shape
    if idx.ndim != 2 or idx.shape[1] != 2 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be an (M, 2) integer array of (image, class) pairs, got shape {idx.shape}")
    idx = idx.astype(np.int64).reshape(-1, 2)
    if idx.size and (idx.min() < 0 or idx[:, 0].max() >= n or idx[:, 1].max() >= k):
        raise ValueError(f"indices must lie inside (N, K) = ({n}, {k})")
    ni, ki = idx[:, 0], idx[:, 1]
    states = st.states[ni, ki]
    pred = st.pred_probs[ni, ki].astype(np.float64)
    relabeled = states == int(LabelState.RELABELED)
    suggested = np.where(relabeled, st.refined_labels[ni, ki], (pred > 0.5).astype(np.uint8)).astype(np.uint8)
    return dict(
        image_index=ni.copy(),
        class_index=ki.copy(),
        given=st.given_labels[ni, ki].astype(np.uint8),
        suggested=suggested,
        state=states.astype(np.int8),
        clean_prob=st.clean_prob[ni, ki].astype(np.float64),
        pred_prob=pred,
        view_mean=st.view_mean[ni, ki].astype(np.float64),
        quality=_scores(st, ranked_by)[ni, ki],
    )


#: Columns of ``label_issues.csv`` (:func:`write_label_issues`).
_ISSUE_COLUMNS = ("image_id", "file", "class_index", "class", "given", "state", "refined", "changed",
                  "clean_prob", "pred_prob", "view_mean", "confidence", "label_quality")


def write_label_issues(engine: Any, dataset: Any, path: str | Path) -> int:
    """``label_issues.csv``: every re-labeled or ambiguous label, most confident first.

    ``engine`` is anything :func:`load_label_state` accepts (a refreshed engine, a run folder,
    a checkpoint); ``dataset`` names the rows (its ``image_ids``, ``image_paths`` and
    ``classes`` if it has them, else positions and class indices). Columns: image_id, file,
    class_index, class, given, state, refined, changed, clean_prob, pred_prob (f(x)), view_mean
    (Eq. 9's mean of the views), confidence, label_quality. ``confidence`` is the views'
    agreement with the refined value for re-labeled labels (``view_mean`` or ``1 - view_mean``,
    what Eq. 9 thresholds at ``eps``) and ``1 - p_G`` for ambiguous ones; ``label_quality`` is the
    default score of :func:`label_quality_scores` (in [0, 1], low = the given label is likely
    wrong). Rows whose ``changed`` is 1 or whose state is ambiguous are what
    :func:`find_label_issues` flags by default. An engine that was never refreshed gives the
    header only (and a warning). The file is written atomically (a temporary file renamed).

    Returns:
        The number of rows written.

    Raises:
        ValueError: ``engine`` is nothing :func:`load_label_state` reads.
    """
    from .engine import BalanceMixEngine

    if isinstance(engine, BalanceMixEngine) and not engine.history:
        _logger.warning("the engine was never refreshed: %s lists no labels", path)
        write_text(path, ",".join(_ISSUE_COLUMNS) + "\n")
        return 0
    st = load_label_state(engine)
    pairs = np.argwhere(st.states != int(LabelState.CLEAN))  # row-major (image, class)
    d = describe_label_issues(st, pairs)
    relabeled = d["state"] == int(LabelState.RELABELED)
    refined = st.refined_labels[d["image_index"], d["class_index"]]
    vp, cp = d["view_mean"].astype(np.float32), d["clean_prob"].astype(np.float32)
    conf = np.where(relabeled, np.where(refined == 1, vp, np.float32(1) - vp), np.float32(1) - cp)
    order = np.argsort(-conf, kind="stable")
    image_ids = list(getattr(dataset, "image_ids", range(len(dataset))))
    paths = list(getattr(dataset, "image_paths", [""] * len(dataset)))
    classes = list(getattr(dataset, "classes", [str(i) for i in range(st.shape[1])]))
    names = {int(LabelState.RELABELED): "relabeled", int(LabelState.AMBIGUOUS): "ambiguous"}

    def write(fh: IO[str]) -> None:
        w = csv.writer(fh)
        w.writerow(_ISSUE_COLUMNS)
        for j in order.tolist():
            n, k, given = int(d["image_index"][j]), int(d["class_index"][j]), int(d["given"][j])
            w.writerow([
                image_ids[n], Path(str(paths[n])).name, k, classes[k], given, names[int(d["state"][j])],
                int(refined[j]), int(int(refined[j]) != given), f"{float(cp[j]):.4f}",
                f"{float(d['pred_prob'][j]):.4f}", f"{float(vp[j]):.4f}", f"{float(conf[j]):.4f}",
                f"{float(d['quality'][j]):.4f}",
            ])

    atomic_write(path, write)  # UTF-8 whatever the locale: class names may be any text
    _logger.info("label issues: %d re-labeled or ambiguous labels written to %s", len(order), path)
    return int(len(order))
