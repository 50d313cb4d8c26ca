"""ML-Decoder integration: our flags beside ML-Decoder's, options reaching the engine, the Table 6 command lines."""

from __future__ import annotations

import pytest

from balancemix_timm.integrations import ml_decoder as bm
from tests._ml_decoder import (
    IMAGE_TF,
    REPO,
    ml_decoder_parser,
    parse,
)


# ============================================================================ flags
def test_add_args_keeps_ml_decoder_flags_and_adds_ours():
    base = vars(ml_decoder_parser().parse_args(["--batch-size", "8", "--model-name", "tresnet_m"]))
    with_ours = ml_decoder_parser()
    bm.add_args(with_ours)
    ours = vars(with_ours.parse_args(["--batch-size", "8", "--model-name", "tresnet_m"]))
    assert {k: ours[k] for k in base} == base
    new = set(ours) - set(base)
    assert all(k == "balancemix" or k.startswith("bm_") for k in new)
    assert ours["balancemix"] is False and ours["bm_minority_sampler"] is None  # not given: the preset's
    from balancemix_timm.integrations.ml_decoder_flags import option_values_from_args

    assert option_values_from_args(with_ours.parse_args([]))["minority_sampler"] is True
    a = parse(["--balancemix", "--no-bm-minority-sampler", "--bm-label-management", "clean", "--bm-alpha", "0",
               "--bm-base-loss", "asl", "--bm-reduction", "mean", "--bm-label-source", "epoch_pass", "--bm-seed", "3"])
    assert (a.balancemix, a.bm_minority_sampler, a.bm_label_management, a.bm_alpha) == (True, False, "clean", 0.0)
    assert (a.bm_base_loss, a.bm_reduction, a.bm_label_source, a.bm_seed) == ("asl", "mean", "epoch_pass", 3)
    with pytest.raises(SystemExit):
        parse(["--bm-label-management", "most"])
    p = ml_decoder_parser()
    bm.add_args(p)
    text = p.format_help()
    for flag in ("--balancemix", "--bm-alpha", "--bm-eps", "--bm-warmup-epochs", "--bm-minority-sampler",
                 "--no-bm-minority-sampler", "--bm-label-management", "--bm-base-loss", "--bm-reduction",
                 "--bm-gmm-max-iter", "--bm-label-source", "--bm-seed", "--bm-model", "--bm-resume"):
        assert flag in text


def test_setup_is_none_without_balancemix(train_set, caplog):
    assert bm.setup(parse([]), train_set) is None
    with caplog.at_level("WARNING", logger="balancemix_timm"):
        assert bm.setup(parse(["--bm-alpha", "2"]), train_set) is None
    assert "--bm-alpha" in caplog.text


def test_option_flags_parse_and_reach_the_engine(train_set, capsys):
    from balancemix_timm.options import PRESETS

    default, paper = PRESETS["default"], PRESETS["paper"]
    from balancemix_timm.integrations.ml_decoder_flags import option_values_from_args

    a = option_values_from_args(parse([]))
    assert (a["clean_if_agrees"], a["record_momentum"], a["managed_labels"]) == (
        default["clean_if_agrees"], default["record_momentum"], default["managed_labels"])
    plugin = bm.setup(parse(["--balancemix"]), train_set, image_transform=IMAGE_TF)
    eng = plugin.engine
    assert (eng.clean_if_agrees, eng.record_momentum, eng.managed_labels) == (
        default["clean_if_agrees"], default["record_momentum"], default["managed_labels"])
    assert plugin.confidence_input == default["confidence_input"]
    # --bm-preset paper: the literal paper on every flag left at its default; a set flag wins.
    plugin = bm.setup(parse(["--balancemix", "--bm-preset", "paper"]), train_set, image_transform=IMAGE_TF)
    assert (plugin.engine.clean_if_agrees, plugin.engine.managed_labels, plugin.confidence_input) == (
        paper["clean_if_agrees"], paper["managed_labels"], paper["confidence_input"])
    plugin = bm.setup(parse(["--balancemix", "--bm-preset", "paper", "--bm-managed-labels", "negative"]), train_set,
                      image_transform=IMAGE_TF)
    assert plugin.engine.managed_labels == "negative" and plugin.engine.clean_if_agrees == paper["clean_if_agrees"]
    argv = ["--balancemix", "--bm-clean-if-agrees", "--bm-record-momentum", "0.25", "--bm-managed-labels",
            "negative", "--bm-confidence-input", "image"]
    plugin = bm.setup(parse(argv), train_set, image_transform=IMAGE_TF)
    eng = plugin.engine
    assert (eng.clean_if_agrees, eng.record_momentum, eng.managed_labels) == (True, 0.25, "negative")
    assert plugin.confidence_input == "image" and plugin.image_transform is IMAGE_TF
    assert plugin.config()["confidence_input"] == "image"
    options = {"clean_if_agrees": True, "record_momentum": 0.25, "managed_labels": "negative"}
    assert options.items() <= eng.config().items()
    assert parse(["--bm-clean-if-agrees", "--no-bm-clean-if-agrees"]).bm_clean_if_agrees is False
    for bad in (["--bm-managed-labels", "positive"], ["--bm-confidence-input", "crop"], ["--bm-record-momentum", "x"]):
        with pytest.raises(SystemExit):
            parse(bad)
    # A number out of its option's range is refused by the parser, naming the flag and the range.
    with pytest.raises(SystemExit):
        parse(["--balancemix", "--bm-record-momentum", "1"])
    assert "argument --bm-record-momentum: must be a number in [0, 1), got '1'" in capsys.readouterr().err
    p = ml_decoder_parser()
    bm.add_args(p)
    text = p.format_help()
    for flag in ("--bm-clean-if-agrees", "--no-bm-clean-if-agrees", "--bm-record-momentum", "--bm-managed-labels",
                 "--bm-confidence-input"):
        assert flag in text
    # Without --balancemix the new flags are ignored, and named.
    assert bm.setup(parse(["--bm-confidence-input", "image"]), train_set) is None


def test_table6_configs_parse():
    from balancemix_timm.config import load_config

    for key, size, model in (("tresnet_l_640", 640, "tresnet_l_mldecoder"),
                             ("tresnet_l_448", 448, "tresnet_l_mldecoder"),
                             ("resnet101_448", 448, "resnet101")):
        cfg = load_config(REPO / "configs" / f"table6_{key}.yaml")
        assert (cfg.data, cfg.model, cfg.head, cfg.image_size) == ("coco", model, "ml_decoder", size)
        assert (cfg.optimizer, cfg.lr, cfg.scheduler, cfg.ema_decay, cfg.epochs, cfg.batch_size) == (
            "adam", 1e-4, "onecycle", 0.9997, 40, 56)
        assert cfg.method == "balancemix" and cfg.warmup_epochs == 10
        assert abs(cfg.weight_decay * cfg.batch_size - 1e-4) < 1e-9  # mean loss: ML-Decoder's wd / 56
        # The shell script's command line parses with ML-Decoder's flags plus ours.
        text = (REPO / "configs" / "ml_decoder" / f"table6_{key}.sh").read_text()
        cmd = text.split("python train.py", 1)[1].split('"$@"', 1)[0]
        argv = [a.strip('"') for a in cmd.replace("\\\n", " ").split()]
        argv = [{"$COCO": "/data/coco", "$WEIGHTS": "w.pth"}.get(a, a) for a in argv]
        p = ml_decoder_parser()
        bm.add_args(p)
        args = p.parse_args(argv)
        assert args.balancemix and args.image_size == size and args.batch_size == 56
        from balancemix_timm.integrations.ml_decoder_flags import option_values_from_args

        opts = option_values_from_args(args)
        assert opts["warmup_epochs"] == 10 and opts["alpha"] == 4 and opts["eps"] == 0.975
        assert args.bm_model == (None if model.startswith("tresnet") else "resnet101")
