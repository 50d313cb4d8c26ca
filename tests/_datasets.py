"""The tiny COCO and VOC trees shared by the test_datasets* modules."""

from __future__ import annotations

import json

from PIL import Image

# ----------------------------------------------------------------- tiny COCO
# Category ids deliberately non-contiguous and listed out of order in the file.
CATEGORIES = [
    {"id": 17, "name": "cat"},
    {"id": 1, "name": "person"},
    {"id": 90, "name": "toothbrush"},
    {"id": 3, "name": "car"},
]
# Sorted by id: 1 person, 3 car, 17 cat, 90 toothbrush -> class index 0, 1, 2, 3.
IMAGES = [  # (id, file name, colour written into the image)
    (10, "a.png", (255, 0, 0)),
    (11, "b.png", (0, 255, 0)),
    (12, "c.png", (0, 0, 255)),   # no annotation
    (13, "sub/d.png", (10, 20, 30)),
    (14, "e.png", (200, 100, 50)),
]
ANNOTATIONS = [  # (image id, category id, iscrowd); image 13 annotated first
    (13, 17, 0),
    (13, 3, 0),
    (10, 3, 0),
    (10, 90, 0),
    (11, 1, 0),
    (11, 1, 0),   # duplicate positive counts once
    (14, 90, 1),  # crowd only
    (10, 3, 0),
]
# Hand-written expectation, images order (10, 11, 13, 14), classes (person, car, cat, tooth).
EXPECTED = {
    10: [0, 1, 0, 1],
    11: [1, 0, 0, 0],
    12: [0, 0, 0, 0],
    13: [0, 1, 1, 0],
    14: [0, 0, 0, 1],
}


def _write_coco(root, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES,
                drop_keys=()):
    root.mkdir(parents=True, exist_ok=True)
    img_dir = root / "imgs"
    for _, name, colour in images:
        path = img_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), colour).save(path)
    data = {
        "images": [{"id": i, "file_name": n, "width": 6, "height": 4} for i, n, _ in images],
        "annotations": [{"id": j, "image_id": i, "category_id": c, "iscrowd": cr,
                         "area": 10.0, "bbox": [0, 0, 2, 2]}
                        for j, (i, c, cr) in enumerate(annotations)],
        "categories": categories,
    }
    for key in drop_keys:
        del data[key]
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


# ------------------------------------------------------------------ tiny VOC
def _voc_xml(objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        + ("" if d is None else f"<difficult>{d}</difficult>")
        + "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
        for n, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>"
            f"<size><width>6</width><height>4</height><depth>3</depth></size>{objs}"
            f"</annotation>")


VOC_FILES = {
    "000001": [("dog", "0"), ("person", "0"), ("dog", "0")],
    "000002": [("cat", "1"), ("car", None)],   # cat difficult, car without <difficult>
    "000003": [("bottle", "1")],               # only a difficult object
    "000004": [("horse", "0")],                # not in the split
}
