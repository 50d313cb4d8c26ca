"""Integrations of BalanceMix into other projects' training scripts.

* :mod:`balancemix_timm.integrations.ml_decoder`: the flags and calls that ML-Decoder's
  ``train.py`` (Alibaba-MIIL/ML_Decoder) makes once patched.
* :mod:`balancemix_timm.integrations.patch_ml_decoder`: the ``balancemix-patch-ml-decoder``
  command that applies ``ml_decoder_train.patch`` (shipped in this folder) to a checkout.

Nothing is imported here so that ``import balancemix_timm.integrations`` stays cheap.
"""

from __future__ import annotations

__all__: list[str] = []
