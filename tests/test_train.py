"""End-to-end training on a tiny demo set: outputs, exact resume, ablations, bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.trainer import Trainer, main, train
from tests._tiny import tiny

TINY = tiny(eps=0.6)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


def _cfg(data_root: str, out: Path, **kw):
    values = dict(TINY, data_root=data_root, output_dir=str(out))
    values.update(kw)
    return load_config(None, values)


def test_two_epochs_write_outputs(data_root, tmp_path):
    summary = train(_cfg(data_root, tmp_path, run_name="bm"))
    run = tmp_path / "bm"
    for name in ("config.yaml", "metrics.jsonl", "last.pth", "best.pth", "summary.json", "label_issues.csv"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("mAP", "mAP_many", "mAP_medium", "mAP_few", "clean_precision", "clean_recall",
                "lm_sampler_max_over_min"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["mAP"] <= 100.0
    # warm-up 1: the refresh after epoch 1 already hands refined labels to epoch 2.
    assert rows[0]["lm_applied"] and rows[1]["lm_applied"]
    assert summary["last"]["epoch"] == 2
    with (run / "label_issues.csv").open() as fh:
        issues = list(csv.DictReader(fh))
    assert len(issues) == summary["label_issues"]
    if issues:
        assert set(issues[0]) >= {"image_id", "class", "given", "state", "refined", "clean_prob"}
        conf = [float(r["confidence"]) for r in issues]
        assert conf == sorted(conf, reverse=True)


def test_resume_reproduces_uninterrupted_run(data_root, tmp_path):
    full = Trainer(_cfg(data_root, tmp_path, run_name="full"))
    full.fit()
    # Interrupted after epoch 1, then resumed by a fresh process-like Trainer.
    Trainer(_cfg(data_root, tmp_path, run_name="part")).fit(stop_after=1)
    resumed = Trainer(_cfg(data_root, tmp_path, run_name="part"))
    resumed.fit(resume=resumed.run_dir / "last.pth")
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    ea, eb = full.method.engine.state_dict(), resumed.method.engine.state_dict()
    for key in ("refined_labels", "state", "clean_prob", "probs"):
        assert torch.equal(ea[key], eb[key]), key
    assert torch.equal(full.method.engine.second_sampler.weights, resumed.method.engine.second_sampler.weights)
    assert full.metrics[-1]["mAP"] == resumed.metrics[-1]["mAP"]


@pytest.mark.parametrize("ablation", ["mixup", "minority", "clean", "relabel", "full"])
def test_each_ablation_row_hands_its_switches_to_the_engine(data_root, tmp_path, ablation):
    from balancemix_timm.engine import ABLATIONS
    from balancemix_timm.sampling import MinoritySampler

    tr = Trainer(_cfg(data_root, tmp_path, run_name=ablation, ablation=ablation, epochs=1, warmup_epochs=0,
                      max_steps_per_epoch=2))
    eng = tr.method.engine
    assert eng.use_minority_sampler == ABLATIONS[ablation]["minority_sampler"]
    assert isinstance(eng.second_sampler, MinoritySampler) == ABLATIONS[ablation]["minority_sampler"]
    assert eng.label_management == ABLATIONS[ablation]["label_management"]
    summary = tr.fit()
    assert summary["last"]["epoch"] == 1
    if ablation in ("mixup", "minority"):  # no label management: every label stays clean
        assert summary["last"]["lm_clean_fraction"] == 1.0


def test_bce_baseline_and_epoch_pass(data_root, tmp_path):
    s = train(_cfg(data_root, tmp_path, run_name="bce", method="bce", epochs=1, max_steps_per_epoch=2))
    assert "clean_precision" not in s["last"]
    s = train(_cfg(data_root, tmp_path, run_name="pass", label_source="epoch_pass", epochs=1, max_steps_per_epoch=2))
    assert s["last"]["lm_unseen"] == 0


@pytest.mark.parametrize("name", ["last.pth", "best.pth"])
def test_pretrained_path_from_an_earlier_runs_checkpoint(data_root, tmp_path, name):
    first = Trainer(_cfg(data_root, tmp_path, run_name="first", epochs=1, max_steps_per_epoch=2))
    first.fit()
    # last.pth pickles NumPy objects (RNG state, metrics): a weights-only load must allow them.
    second = Trainer(_cfg(data_root, tmp_path, run_name="second", epochs=1, demo_num_classes=20,
                          pretrained_path=str(first.run_dir / name)))
    trained = first.model.state_dict()
    for key, value in second.model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value.cpu(), trained[key].cpu()), key


def _no_nan(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} written")

    return json.loads(text, parse_constant=refuse)


def test_class_groups_scale_with_any_data_set_and_absent_groups_are_never_nan(data_root, tmp_path, caplog):
    from balancemix_timm.metrics import scaled_group_thresholds

    Trainer(_cfg(data_root, tmp_path, run_name="make"))  # writes the demo set (COCO format)
    # data=coco on a small set: COCO's thresholds scaled by N_train / 82,081, as for the demo.
    t = Trainer(_cfg(data_root, tmp_path, run_name="coco", data="coco", method="bce", epochs=1, max_steps_per_epoch=1))
    assert t.group_thresholds == scaled_group_thresholds(len(t.train_set)) == (19, 2)
    assert all(len(idx) for idx in t.groups.values())
    # Thresholds no class can meet: the many- and few-shot groups are empty, reported as absent.
    with caplog.at_level("INFO", logger="balancemix_timm.trainer"):
        summary = train(_cfg(data_root, tmp_path, run_name="absent", data="coco", method="bce", epochs=1,
                             max_steps_per_epoch=1, many_threshold=100000, few_threshold=1))
    run = tmp_path / "absent"
    rows = [_no_nan(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "mAP_many" not in rows[-1] and "mAP_few" not in rows[-1] and "mAP_medium" in rows[-1]
    written = _no_nan((run / "summary.json").read_text())
    assert set(written["group_absent"]) == {"many", "few"}
    assert "no class has > 100000 positives" in written["group_absent"]["many"]
    assert "no class has < 1 positives" in written["group_absent"]["few"]
    assert summary["group_sizes"] == {"many": 0, "medium": 20, "few": 0}
    epoch_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1"))
    assert "many absent" in epoch_line and "few absent" in epoch_line and "nan" not in epoch_line.lower()
    assert any("'many' absent: no class has > 100000" in r.getMessage() for r in caplog.records)


def test_cli_main(data_root, tmp_path, capsys):
    rc = main([f"data_root={data_root}", f"output_dir={tmp_path}", "run_name=cli", "epochs=1", "max_steps_per_epoch=1",
               "demo_num_train=160", "demo_num_val=64", "demo_num_classes=20", "image_size=32", "progress=false",
               "plots=false"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epoch"] == 1


def test_bad_input_fails_before_training(data_root, tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        Trainer(_cfg(data_root, tmp_path, num_classes=7))
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, dict(TINY, lerning_rate=1.0))
    with pytest.raises(ValueError, match="noise_rate"):
        load_config(None, dict(TINY, noise_rate=1.5))
    # A checkpoint from another configuration is refused.
    t = Trainer(_cfg(data_root, tmp_path, run_name="a", epochs=1, max_steps_per_epoch=1))
    t.fit()
    other = Trainer(_cfg(data_root, tmp_path, run_name="b", epochs=1, alpha=1.0))
    with pytest.raises(ValueError, match="another configuration"):
        other.load_checkpoint(t.run_dir / "last.pth")
    with pytest.raises(FileNotFoundError):
        other.load_checkpoint(tmp_path / "nope.pth")


def test_resume_with_data_at_another_location(data_root, tmp_path, caplog):
    """The data folder reached through a link, or copied elsewhere, resumes: locations are
    compared as resolved paths, a moved one warns, and the labels must still be the same."""
    import shutil

    t = Trainer(_cfg(data_root, tmp_path, run_name="a", epochs=1, max_steps_per_epoch=1))
    t.fit()
    last = t.run_dir / "last.pth"
    resumed = lambda root, **kw: Trainer(_cfg(root, tmp_path, run_name="a", epochs=1, max_steps_per_epoch=1, **kw))  # noqa: E731
    link = tmp_path / "link"
    link.symlink_to(data_root, target_is_directory=True)
    with caplog.at_level("WARNING", logger="balancemix_timm.trainer"):
        resumed(str(link)).load_checkpoint(last)
    assert not [r for r in caplog.records if "other locations" in r.getMessage()]
    copy = tmp_path / "copy"
    shutil.copytree(data_root, copy)
    with caplog.at_level("WARNING", logger="balancemix_timm.trainer"):
        resumed(str(copy)).load_checkpoint(last)
    assert any("other locations" in r.getMessage() and "data_root" in r.getMessage() for r in caplog.records)
    # moved data with other labels is still refused
    with pytest.raises(ValueError, match="another configuration"):
        resumed(str(copy), noise="mislabel", noise_rate=0.2).load_checkpoint(last)


def test_empty_and_non_binary_data(tmp_path):
    from balancemix_timm.data.datasets import CocoMultiLabel

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(images=[], annotations=[], categories=[dict(id=1, name="a")])))
    with pytest.raises(ValueError):
        CocoMultiLabel(tmp_path, ann)


@pytest.mark.parametrize("method", ["bce", "balancemix", "mixup"])
def test_one_sample_tail_never_reaches_a_training_step(tmp_path_factory, tmp_path, method):
    # 33 images, batch 32: the tail of one joins the first batch (BatchNorm would otherwise fail
    # on a batch of one with a 1x1 last stage at 32 px).
    root = str(tmp_path_factory.mktemp("demo33"))
    cfg = _cfg(root, tmp_path, run_name=method, method=method, demo_num_train=33, demo_num_val=16,
               demo_num_classes=6, epochs=1, warmup_epochs=0, noise="clean", noise_rate=0.0)
    trainer = Trainer(cfg)
    assert trainer.steps_per_epoch == 1
    sizes = [len(b.index_r) if trainer.method.paired else len(b[0]) for b in trainer._train_loader(0)]
    assert sizes == [33]
    summary = trainer.fit()
    assert summary["last"]["epoch"] == 1
    if method == "balancemix":   # every sample recorded its views for the refresh
        assert bool(trainer.method.engine.seen.all())


def test_batch_of_one_refused_before_training(data_root, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        _cfg(data_root, tmp_path, batch_size=1).validate()


def test_splits_with_different_categories_refused(tmp_path):
    from PIL import Image

    from balancemix_timm.trainer import build_datasets

    for split, cats in (("train", [(1, "person"), (2, "bicycle"), (3, "car")]),
                        ("val", [(1, "person"), (3, "car"), (4, "motorcycle")])):
        (tmp_path / split).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / split / f"{i}.png")
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(dict(
            images=[dict(id=i, file_name=f"{i}.png") for i in range(3)],
            annotations=[dict(image_id=i, category_id=cats[i][0]) for i in range(3)],
            categories=[dict(id=c, name=n) for c, n in cats])))
    with pytest.raises(ValueError, match="different categories") as info:
        build_datasets(load_config(None, dict(data="coco", data_root=str(tmp_path))))
    msg = str(info.value)
    assert "only in training: 'bicycle' (id 2)" in msg and "only in validation: 'motorcycle' (id 4)" in msg
    with pytest.raises(ValueError, match="num_classes=4"):
        (tmp_path / "annotations" / "instances_val.json").write_text(
            (tmp_path / "annotations" / "instances_train.json").read_text())
        build_datasets(load_config(None, dict(data="coco", data_root=str(tmp_path), num_classes=4)))


def test_voc_validation_uses_the_voc_protocol_by_default(tmp_path):
    from PIL import Image

    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    objects = {"a": "dog", "b": "cat", "c": "person", "d": "cat"}
    for image_id, name in objects.items():
        extra = "<object><name>dog</name><difficult>1</difficult></object>" if image_id == "b" else ""
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>{name}</name><difficult>0</difficult></object>{extra}</annotation>")
        Image.new("RGB", (16, 16), (60, 90, 120)).save(root / "JPEGImages" / f"{image_id}.jpg")
    for split in ("trainval", "test"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    base = dict(TINY, data="voc", data_root=str(root), output_dir=str(tmp_path / "runs"), batch_size=2,
                noise="clean", noise_rate=0.0, method="bce", epochs=1)
    trainer = Trainer(load_config(None, base))
    dog = trainer.val_set.classes.index("dog")
    assert trainer.val_ignore is not None and trainer.val_ignore[:, dog].tolist() == [False, True, False, False]
    scores = torch.zeros(4, 20)
    scores[:, dog] = torch.tensor([0.8, 0.9, 0.1, 0.2])
    figures = trainer._map_figures(scores, trainer.val_set.labels.float(), "")
    # Classes with a positive: dog (AP 1 with b's difficult-only dog ignored, 0.5 counted as a
    # negative), cat (tied scores, 2 of 4 positive: AP 0.5), person (1 of 4: AP 0.25).
    assert figures["mAP"] == pytest.approx(100 * (1.0 + 0.5 + 0.25) / 3)
    negative = Trainer(load_config(None, dict(base, voc_difficult_eval="negative")))
    assert negative.val_ignore is None
    assert negative._map_figures(scores, trainer.val_set.labels.float(), "")["mAP"] == pytest.approx(
        100 * (0.5 + 0.5 + 0.25) / 3)


@pytest.mark.parametrize("label_source", ["views", "epoch_pass"])
def test_confidence_input_image_records_the_unaugmented_image(data_root, tmp_path, label_source):
    """f(x) of Eq. 2 / 6 is the eval-mode prediction of the un-augmented image; Eq. 9 keeps the views."""
    tr = Trainer(_cfg(data_root, tmp_path, run_name=label_source, label_source=label_source,
                      confidence_input="image", epochs=1, warmup_epochs=1))
    if label_source == "views":
        views = tr.train_set.transform.transforms
        assert len(views) == 1 + tr.cfg.num_views + 1
        assert views[-1] is tr._eval_tf and all(t is tr._train_tf for t in views[:-1])
    tr.fit()
    eng = tr.method.engine
    assert not torch.equal(eng.probs, eng.view_mean)
    if label_source == "epoch_pass":  # recorded with the epoch's final weights: equal to a fresh pass
        scores, _ = tr.predict(tr.model, tr.training_images())
        torch.testing.assert_close(eng.probs, scores.float(), atol=1e-5, rtol=1e-4)


def _damaged_checkpoint(path: Path, kind: str) -> Path:
    """A checkpoint file cut short (``truncated``) or left empty (``empty``) at ``path``."""
    torch.save(dict(format="balancemix-timm/2", model={"w": torch.zeros(256)}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"")
    return path


@pytest.mark.parametrize("kind", ["truncated", "empty"])
@pytest.mark.parametrize("target", ["resume_auto", "resume_path", "pretrained_path"])
def test_a_damaged_checkpoint_is_refused_before_data_and_model_are_built(data_root, tmp_path, monkeypatch, capsys,
                                                                          kind, target):
    import balancemix_timm.trainer.core as core

    def built(*args, **kwargs):
        raise AssertionError("the data set was built before the checkpoint was checked")

    monkeypatch.setattr(core, "build_datasets", built)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    values, resume = {}, None
    if target == "pretrained_path":
        ckpt = _damaged_checkpoint(tmp_path / "backbone.pth", kind)
        values["pretrained_path"] = str(ckpt)
        name = "config pretrained_path"
    else:
        ckpt = _damaged_checkpoint(run_dir / "last.pth", kind)
        resume = "auto" if target == "resume_auto" else str(ckpt)
        name = "resume checkpoint"
    cfg = _cfg(data_root, tmp_path, **values)
    with pytest.raises(ValueError, match=rf"^{name} '{re.escape(str(ckpt))}' is damaged or incomplete \(.*\): "
                                         r".*(delete it|pass an intact file)"):
        train(cfg, resume=resume, run_dir=run_dir)
    argv = [f"data_root={data_root}", f"output_dir={tmp_path}", *(f"{k}={v}" for k, v in values.items()),
            "--run-dir", str(run_dir), *(["--resume", resume] if resume else [])]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {name} '{ckpt}' is damaged or incomplete" in err and "Traceback" not in err
    if target == "pretrained_path":
        with pytest.raises(ValueError, match="damaged or incomplete"):
            Trainer(cfg, run_dir=run_dir)


def test_a_damaged_resume_checkpoint_names_the_best_weights_as_a_way_out(data_root, tmp_path):
    from balancemix_timm.trainer.checkpoint import check_run_files

    last = _damaged_checkpoint(tmp_path / "last.pth", "truncated")
    torch.save({"model": {}}, tmp_path / "best.pth")
    with pytest.raises(ValueError, match=rf"pretrained_path={tmp_path / 'best.pth'}"):
        check_run_files(_cfg(data_root, tmp_path), last)
    assert check_run_files(_cfg(data_root, tmp_path), "auto", tmp_path / "elsewhere") is None   # nothing to resume
