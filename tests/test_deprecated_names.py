"""Renamed public names still import and work, with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import pytest
import torch

import balancemix_timm
from balancemix_timm import engine
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.gmm import LabelGMM


def test_engine_former_name_is_the_engine_with_a_warning():
    with pytest.warns(DeprecationWarning, match="use BalanceMixEngine"):
        assert engine.BalanceMix is BalanceMixEngine
    with pytest.warns(DeprecationWarning, match="use BalanceMixEngine"):
        assert balancemix_timm.BalanceMix is BalanceMixEngine
    with pytest.raises(AttributeError):
        engine.NoSuchName  # noqa: B018


def test_label_gmm_former_method_names_give_the_same_probabilities():
    g = torch.Generator().manual_seed(0)
    losses, labels = torch.rand(60, 3, generator=g), (torch.rand(60, 3, generator=g) < 0.4).float()
    gmm = LabelGMM(min_group_size=2)
    expected = gmm.fit_predict_clean_probability(losses, labels)
    with pytest.warns(DeprecationWarning, match="fit_predict_clean_probability"):
        torch.testing.assert_close(LabelGMM(min_group_size=2).fit_predict_clean_proba(losses, labels), expected)
    with pytest.warns(DeprecationWarning, match="use LabelGMM.predict_clean_probability"):
        torch.testing.assert_close(gmm.predict_clean_proba(losses, labels),
                                   gmm.predict_clean_probability(losses, labels))


def test_former_trainer_module_still_exports_its_names():
    from balancemix_timm import train

    for name in ("Trainer", "train", "main", "build_datasets", "noisy_labels", "write_label_issues", "plot_metrics"):
        assert callable(getattr(train, name)), name
