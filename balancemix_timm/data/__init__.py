"""Data sets (COCO, VOC) and transforms (the offline demo data: :mod:`balancemix_apps.synthetic`)."""
