"""What a training method is given: the run's model, labels, recipe and a few services.

A :class:`~balancemix_timm.methods.base.TrainingMethod` is built from a :class:`MethodContext`
and nothing else. The application that trains (``balancemix_timm.trainer``) builds the context;
the methods never see the trainer, so the library does not depend on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..utils import autocast, epoch_seed, seed_worker, view_probabilities

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig

__all__ = ["MethodContext"]


@dataclass
class MethodContext:
    """The run as a training method sees it.

    Attributes:
        cfg: The run's configuration (recipe, ``method_options``, seeds, batch sizes).
        model: The network being trained, unwrapped (validated, EMA-tracked, checkpointed).
        ddp_model: ``model`` as the training forward must call it (wrapped in
            ``DistributedDataParallel`` under DDP, else ``model`` itself).
        device: The training device.
        given_labels: ``(N, K)`` uint8, the labels trained on (noise injected), one row per
            training item (index ``n`` of the batches' ``index`` fields).
        clean_labels: ``(N, K)`` uint8, the labels before noise injection.
        true_labels_known: Whether ``clean_labels`` are the true labels (noise was injected);
            figures against them are logged only then.
        num_classes: ``K``.
        train_set: The training data set (its ``image_ids`` / ``image_paths`` / ``classes``
            name rows in outputs; its items carry the method's extra views).
        eval_transform: The evaluation transform (no augmentation).
        unaugmented_training: The training transform augments nothing (it is
            ``eval_transform``): every view of an item is the same tensor.
        predict: ``predict(model, dataset) -> (scores, targets)``, both ``(len(dataset), K)``
            float32 on the host: sigmoid scores of every item in order, no gradient, with the
            rows of all ranks gathered under DDP. Leaves ``model`` in eval mode.
        train_set, eval_transform, predict and build_view_set may be None where the
        application offers none (a context for unit tests); a method that needs one then
        raises ``ValueError`` when it is built or when it first needs it.
        build_view_set: ``build_view_set(num_views, image_view=False)``: a second copy of the
            training set whose items are ``(views, target, index)`` with ``num_views`` train-
            transform views, then (``image_view``) the image under the eval transform. None
            where the application offers none (a method that needs it then raises).
        run_dir: The run's output folder (written on the main rank only).
        pretrained_path: The backbone weights file the model was created from, or None.
        amp: Mixed precision in forwards (:func:`~balancemix_timm.utils.autocast`: float16 on
            CUDA, bfloat16 on CPU).
        world_size: Number of DDP ranks (1 without DDP).
        rank: This process's rank.
        worker_init_fn: DataLoader ``worker_init_fn`` of the run's loaders.
    """

    cfg: TrainConfig
    model: nn.Module
    ddp_model: nn.Module
    device: torch.device
    given_labels: Tensor
    clean_labels: Tensor
    true_labels_known: bool
    num_classes: int
    train_set: Dataset | None = None
    eval_transform: Any = None
    unaugmented_training: bool = False
    predict: Callable[[nn.Module, Dataset], tuple[Tensor, Tensor]] | None = None
    build_view_set: Callable[..., Dataset] | None = None
    run_dir: Path = field(default_factory=Path)
    pretrained_path: str | None = None
    amp: bool = False
    world_size: int = 1
    rank: int = 0
    worker_init_fn: Callable[[int], None] = seed_worker

    @property
    def is_main(self) -> bool:
        """Whether this is the rank that writes the run's files (rank 0)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context of the training forwards (:func:`~balancemix_timm.utils.autocast`)."""
        return autocast(self.device, self.amp)

    @torch.no_grad()
    def view_probs(self, views: Tensor, model: nn.Module | None = None, count: int | None = None) -> Tensor:
        """Probabilities of views in eval mode, without gradient.

        Args:
            views: ``(V, B, C, H, W)`` augmented views of ``B`` items.
            model: The network (default :attr:`model`).
            count: Forward only the first ``count`` items of each view (default all ``B``).

        Returns:
            ``(V, count, K)`` sigmoid probabilities on :attr:`device`; see
            :func:`~balancemix_timm.utils.view_probabilities` (the model's mode is restored).
        """
        return view_probabilities(self.model if model is None else model, views, self.device,
                                  amp=self.amp, count=count)

    def loader_generator(self, epoch: int, stream: int) -> torch.Generator:
        """The seeded generator of a DataLoader (its worker seeds) for ``(epoch, stream)``."""
        return torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch, stream))
