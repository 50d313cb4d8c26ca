"""Data sets generated offline from what ships inside installed packages: the multi-label demo
set (:mod:`~balancemix_apps.synthetic.demo`, COCO format) and the pre-training corpus
(:mod:`~balancemix_apps.synthetic.pretrain_corpus`)."""
