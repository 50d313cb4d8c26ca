"""The applications built on the :mod:`balancemix_timm` library, which never imports them.

* :mod:`~balancemix_apps.trainer` (``balancemix-train``): the trainer, its configuration
  (:mod:`~balancemix_apps.config`, the shipped YAML recipes of :mod:`~balancemix_apps.recipes`)
  and the training methods it runs (:mod:`~balancemix_apps.methods`: BCE, Mixup, BalanceMix and
  the baselines, with :mod:`~balancemix_apps.losses_mlml`'s Hill and SPLC losses);
* :mod:`~balancemix_apps.benchmark` (``balancemix-benchmark``): the paper's tables on the offline
  data;
* :mod:`~balancemix_apps.demo` (``balancemix-demo``), :mod:`~balancemix_apps.pretrain`
  (``balancemix-pretrain``) and the offline data sets they generate
  (:mod:`~balancemix_apps.synthetic`);
* :mod:`~balancemix_apps.diagnostics` (``balancemix-diagnostics``): figures of a run folder.
"""
