"""ML-Decoder integration: the plugin (labels, loader, mixing, criterion, checkpoints) in a stand-in loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from balancemix_timm.data.datasets import CocoMultiLabel
from balancemix_timm.integrations import ml_decoder as bm
from tests._ml_decoder import (
    IMAGE_TF,
    N_TRAIN,
    TF,
    K,
    MLDecoderStyleCoco,
    _eval_probs,
    asl_sum_reference,
    parse,
    small_model,
    standin_train,
)


# ============================================================================ labels
def test_labels_from_dataset_match_an_independent_reading(demo, train_set):
    ours = bm.labels_from_dataset(train_set)
    coco = CocoMultiLabel(demo.train_images, demo.train_annotations, image_order="annotations")
    assert torch.equal(ours, coco.labels)
    # By hand: every item's (3, K) target collapsed by max over the size groups.
    by_hand = torch.stack([train_set[i][1].max(dim=0).values for i in range(len(train_set))]).to(torch.uint8)
    assert torch.equal(ours, by_hand)
    wide = bm.labels_from_dataset(train_set, num_classes=80)  # ML-Decoder's target is 80 wide
    assert wide.shape == (N_TRAIN, 80) and torch.equal(wide[:, :K], ours) and wide[:, K:].sum() == 0

    class Plain(Dataset):  # no COCO index: labels read through __getitem__
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.zeros(1), train_set[i][1]

    assert torch.equal(bm.labels_from_dataset(Plain()), ours[:6])
    with pytest.raises(ValueError, match="outside num_classes"):
        bm.labels_from_dataset(train_set, num_classes=3)


# ============================================================================ loader, mixing
def test_paired_loader_length_and_epoch_coverage(train_set):
    plugin = bm.setup(parse(["--balancemix"]), train_set)
    for bs in (5, 16, 48, 50):
        original = DataLoader(train_set, batch_size=bs, shuffle=True)
        loader = plugin.train_loader(batch_size=bs)
        assert len(loader) == len(original) == math.ceil(N_TRAIN / bs)
    loader = plugin.train_loader(batch_size=20)
    plugin.set_epoch(0)
    sizes, seen = [], []
    for x, target in loader:
        sizes.append(x.shape[0])
        seen.append(plugin._current.index_r)
        assert target.shape == (x.shape[0], 3, K)
    assert sizes == [20, 20, 8]  # no drop_last: the last batch is odd-sized, as in ML-Decoder
    assert sorted(torch.cat(seen).tolist()) == list(range(N_TRAIN))  # a permutation per epoch
    # 48 = 47 + 1: the one-pair tail joins the batch before it (BatchNorm needs two samples).
    loader = plugin.train_loader(batch_size=47)
    plugin.set_epoch(1)
    sizes = [x.shape[0] for x, _ in loader]
    assert sizes == [48] and len(loader) == 1


def test_mix_returns_mixed_images_and_targets_and_record_stores_views(train_set):
    plugin = bm.setup(parse(["--balancemix", "--bm-alpha", "4"]), train_set)
    labels = bm.labels_from_dataset(train_set).float()
    model = small_model()
    plugin.attach(model)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    b = plugin._current
    x_out, y = plugin.mix(x, target.max(dim=1)[0])
    lam = b.lam[0].item()
    assert 0.5 <= lam <= 1.0 and x_out is x
    x_r = torch.stack([train_set[i][0] for i in b.index_r.tolist()])
    x_m = torch.stack([train_set[i][0] for i in b.index_m.tolist()])
    torch.testing.assert_close(x, lam * x_r + (1 - lam) * x_m, rtol=0, atol=1e-6)
    torch.testing.assert_close(y, lam * labels[b.index_r] + (1 - lam) * labels[b.index_m], rtol=0, atol=1e-6)
    plugin.record()
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(x_r))  # both views equal the image (deterministic transform)
    torch.testing.assert_close(plugin.engine.probs[b.index_r], expected, rtol=0, atol=1e-5)
    assert bool(plugin.engine.seen[b.index_r].all()) and int(plugin.engine.seen.sum()) == 16
    # The first batch of an epoch is checked against the engine's labels.
    plugin.set_epoch(1)
    x, target = next(iter(loader))
    bad = target.max(dim=1)[0].clone()
    bad[0] = 1 - bad[0]
    with pytest.raises(ValueError, match="does not match"):
        plugin.mix(x, bad)
    with pytest.raises(ValueError, match="collapsed"):
        plugin.mix(x, target)  # not collapsed: (B, 3, K)


def test_criterion_scale_and_base_losses(train_set):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, K, generator=g) * 3
    # ASL base, summed, no mixing, given labels: exactly ML-Decoder's criterion on binary targets.
    plugin = bm.setup(parse(["--balancemix", "--bm-base-loss", "asl", "--bm-alpha", "0",
                             "--bm-label-management", "none"]), train_set)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    _, y = plugin.mix(x, target.max(dim=1)[0])
    assert torch.equal(y, target.max(dim=1)[0].float())
    torch.testing.assert_close(plugin.criterion(logits, y).double(), asl_sum_reference(logits, y), rtol=1e-5, atol=1e-4)
    # BCE base (Eq. 10), mean and sum reductions.
    for red, scale in (("mean", 1 / 16), ("sum", 1.0)):
        plugin = bm.setup(parse(["--balancemix", "--bm-alpha", "0", "--bm-reduction", red]), train_set)
        loader = plugin.train_loader(batch_size=16)
        plugin.set_epoch(0)
        x, target = next(iter(loader))
        _, y = plugin.mix(x, target.max(dim=1)[0])
        p = torch.sigmoid(logits.double())
        bce = -(y * p.log() + (1 - y) * (1 - p).log()).sum()
        torch.testing.assert_close(plugin.criterion(logits, y).double(), bce * scale, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="train_loader"):
        bm.setup(parse(["--balancemix"]), train_set).criterion(logits, y)


# ============================================================================ stand-in loop
def test_standin_loop_with_balancemix(train_set, val_set, tmp_path):
    args = parse(["--balancemix", "--bm-warmup-epochs", "1", "--bm-checkpoint-dir", str(tmp_path)])
    plugin = bm.setup(args, train_set)
    model = small_model()
    loader = plugin.train_loader(batch_size=16)
    out = standin_train(model, loader, DataLoader(val_set, batch_size=16), 1e-3, plugin, epochs=3)
    assert out["steps_per_epoch"] == 3 and out["batches"] == [16, 16, 16] * 3
    assert all(math.isfinite(v) and v > 0 for v in out["losses"])
    assert bool(plugin.engine.seen.all())
    hist = plugin.engine.history
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert [h["applied"] for h in hist] == [True, True, True]  # warm-up 1: from epoch 1 on
    w = plugin.engine.second_sampler.weights
    assert w.shape == (N_TRAIN,) and not torch.allclose(w, torch.full_like(w, w.mean()))  # Eq. 4 applied
    ckpt = torch.load(tmp_path / "balancemix-last.pth", weights_only=True)
    assert ckpt["epoch"] == 3 and {"model", "ema", "optimizer", "scheduler", "balancemix"} <= set(ckpt)


@pytest.mark.gpu
def test_plugin_on_cuda_moves_tables_to_the_training_device(train_set):
    """--bm-device auto: after the first mix() the engine's tables live on the GPU; a whole
    AMP loop (mix, criterion, record, refresh) then runs without host copies of the state."""
    plugin = bm.setup(parse(["--balancemix", "--bm-warmup-epochs", "1"]), train_set)
    model = small_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    plugin.attach(model, None, optimizer, None, None)
    loader = plugin.train_loader(batch_size=16)
    for epoch in range(2):
        plugin.set_epoch(epoch)
        for input_data, target in loader:
            input_data, target = plugin.mix(input_data.cuda(), target.max(dim=1)[0].cuda())
            with torch.autocast("cuda", dtype=torch.float16):
                output = model(input_data).float()
            loss = plugin.criterion(output, target)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            plugin.record()
            assert math.isfinite(float(loss.detach()))
        plugin.end_epoch(epoch)
    engine = plugin.engine
    assert engine.device.type == "cuda"
    assert all(getattr(engine, name).is_cuda for name in ("given_labels", "refined_labels", "probs"))
    assert [h["applied"] for h in engine.history] == [True, True]
    assert bool(engine.seen.all())


# ============================================================================ engine options


def test_confidence_input_image_needs_an_image_transform(train_set, caplog):
    # The default (image) without an evaluation transform falls back to the views, with a warning.
    with caplog.at_level("WARNING", logger="balancemix_timm"):
        plugin = bm.setup(parse(["--balancemix"]), train_set)
    assert plugin.confidence_input == "views" and "image_transform" in caplog.text
    with pytest.raises(ValueError, match="image_transform"):
        bm.BalanceMixPlugin(train_set, confidence_input="image", label_source="epoch_pass")
    with pytest.raises(ValueError, match="image_transform"):
        bm.BalanceMixPlugin(train_set, confidence_input="image", image_transform="val")
    with pytest.raises(ValueError, match="confidence_input"):
        bm.BalanceMixPlugin(train_set, confidence_input="crop")
    # With f(x) from the views the evaluation transform is not used (the patched script passes it always).
    plugin = bm.setup(parse(["--balancemix", "--bm-confidence-input", "views"]), train_set, image_transform=IMAGE_TF)
    assert plugin.image_transform is None and len(plugin.train_set.transform.transforms) == 3


def test_confidence_input_image_records_the_image_and_the_views(train_set, demo):
    """Views mode: items carry [TF] * (1 + num_views) + [image transform]; f(x) (engine.probs)
    is the image's prediction, Eq. 9's mean (engine.view_mean) the views'."""
    plugin = bm.setup(parse(["--balancemix", "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    assert plugin.train_set.transform.transforms == [TF, TF, TF, IMAGE_TF]
    assert train_set.transform is TF  # the data set itself is left alone (a shallow copy has the views)
    model = small_model()
    plugin.attach(model)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    b = plugin._current
    assert b.view_r.shape == (3, 16, 3, 32, 32)
    plugin.mix(x, target.max(dim=1)[0])
    plugin.record()
    images = MLDecoderStyleCoco(str(demo.train_images), str(demo.train_annotations), IMAGE_TF)
    image_probs = _eval_probs(model, images, b.index_r.tolist())
    view_probs = _eval_probs(model, train_set, b.index_r.tolist())
    eng = plugin.engine
    torch.testing.assert_close(eng.probs[b.index_r], image_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(eng.view_mean[b.index_r], view_probs, rtol=0, atol=1e-5)
    assert not torch.allclose(image_probs, view_probs, atol=1e-3)
    # The epoch pass: num_views training views plus the image, for every sample.
    plugin = bm.setup(parse(["--balancemix", "--bm-label-source", "epoch_pass", "--bm-num-views", "1",
                             "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    assert plugin.train_set is train_set
    plugin.attach(model)
    plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    plugin.end_epoch(0)
    image_probs = _eval_probs(model, images, range(N_TRAIN))
    view_probs = _eval_probs(model, train_set, range(N_TRAIN))
    torch.testing.assert_close(plugin.engine.probs, image_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(plugin.engine.view_mean, view_probs, rtol=0, atol=1e-5)


def test_confidence_input_is_part_of_the_checkpoint_config(train_set):
    views = bm.setup(parse(["--balancemix"]), train_set)
    image = bm.setup(parse(["--balancemix", "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    with pytest.raises(ValueError, match="confidence_input"):
        views.load_state_dict(image.state_dict())
    older = views.state_dict()
    del older["config"]["confidence_input"]  # a state without the option is another configuration
    with pytest.raises(ValueError, match="confidence_input: checkpoint None"):
        bm.setup(parse(["--balancemix"]), train_set).load_state_dict(older)


def test_epoch_pass_records_every_sample(train_set):
    plugin = bm.setup(parse(["--balancemix", "--bm-label-source", "epoch_pass"]), train_set)
    model = small_model()
    plugin.attach(model)
    plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    plugin.end_epoch(0)
    expected = _eval_probs(model, train_set, range(N_TRAIN))
    torch.testing.assert_close(plugin.engine.probs, expected, rtol=0, atol=1e-5)
    assert bool(plugin.engine.seen.all())


def test_checkpoint_round_trip_resumes_bit_for_bit(train_set, val_set, tmp_path):
    val = DataLoader(val_set, batch_size=16)

    def run(ckdir, *, resume=None, stop_after=None, seed=0):
        argv = ["--balancemix", "--bm-warmup-epochs", "1", "--bm-checkpoint-dir", str(ckdir)]
        plugin = bm.setup(parse(argv + (["--bm-resume", str(resume)] if resume else [])), train_set)
        model = small_model(seed)
        standin_train(model, plugin.train_loader(batch_size=16), val, 1e-3, plugin, epochs=2, stop_after=stop_after)
        return model, plugin

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    full_model, full = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=1)
    resumed_model, resumed = run(tmp_path / "c", resume=tmp_path / "b" / "balancemix-last.pth", seed=1)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    for key in ("probs", "refined_labels", "state", "clean_prob"):
        assert torch.equal(getattr(full.engine, key), getattr(resumed.engine, key)), key
    assert torch.equal(full.engine.second_sampler.weights, resumed.engine.second_sampler.weights)
    # Another configuration is refused.
    other = bm.setup(parse(["--balancemix", "--bm-reduction", "mean"]), train_set)
    with pytest.raises(ValueError, match="reduction"):
        other.load_state_dict(full.state_dict())


def test_without_balancemix_the_loop_is_plain_asl(train_set, val_set):
    args = parse([])
    assert bm.setup(args, train_set) is None
    built = small_model()
    assert bm.create_model(args, lambda a: built) is built  # ML-Decoder's factory, untouched

    def make_loader():
        return DataLoader(train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))

    val = DataLoader(val_set, batch_size=16)
    model_a = small_model()
    out = standin_train(model_a, make_loader(), val, 1e-3, None, epochs=1)
    # The same epoch written as a plain ASL loop, without any integration code.
    model_b = small_model()
    opt = torch.optim.Adam(
        [dict(params=[p for n, p in model_b.named_parameters() if p.ndim <= 1 or n.endswith(".bias")],
              weight_decay=0.0),
         dict(params=[p for n, p in model_b.named_parameters() if p.ndim > 1 and not n.endswith(".bias")],
              weight_decay=1e-4)], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, steps_per_epoch=3, epochs=1, pct_start=0.2)
    losses = []
    for x, t in make_loader():
        loss = asl_sum_reference(model_b(x).float(), t.max(dim=1)[0]).float()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert out["losses"] == losses
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_a_damaged_resume_checkpoint_is_refused_before_the_labels_are_read(train_set, tmp_path, monkeypatch, kind):
    import balancemix_timm.integrations.ml_decoder_plugin as plugin_module

    path = tmp_path / "balancemix-last.pth"
    torch.save({"format": "x", "model": {"w": torch.zeros(256)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"")

    def read(*args, **kwargs):
        raise AssertionError("the labels were read before the checkpoint was checked")

    monkeypatch.setattr(plugin_module, "labels_from_dataset", read)
    with pytest.raises(ValueError, match=r"^--bm-resume '.*balancemix-last\.pth' is damaged or incomplete .*delete it"):
        bm.setup(parse(["--balancemix", "--bm-resume", str(path)]), train_set)
    monkeypatch.undo()
    plugin = bm.setup(parse(["--balancemix"]), train_set)
    with pytest.raises(ValueError, match="is damaged or incomplete"):
        plugin.load_checkpoint(path)
