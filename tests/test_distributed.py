"""BalanceMix under DDP on CPU (gloo, 2 processes): identical engine state across ranks and
world sizes, disjoint covering shards, resumable with another world size."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch

from balancemix_timm.config import load_config
from tests._tiny import tiny

# The shared tiny trainer config, smaller and with the trainer's default optimiser settings
# (plain SGD at lr 0.01), one epoch without warm-up, on the CPU.
TINY = tiny(
    demo_num_train=120,
    demo_num_val=48,
    epochs=1,
    warmup_epochs=0,
    batch_size=20,
    eval_batch_size=48,
    lr=0.01,
    eps=0.6,
    device="cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, values: dict, out: str, frozen: bool, resume: str | None,
            stop_after: int | None) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        from balancemix_timm.trainer import Trainer
        from balancemix_timm.trainer.distributed import init_distributed as _init_distributed

        cfg = load_config(None, values)
        _init_distributed(cfg)
        trainer = Trainer(cfg)
        if frozen:
            for m in trainer.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = 0.0
        trainer.fit(resume=resume, stop_after=stop_after)
        eng = trainer.method.engine
        torch.save(
            dict(
                engine=eng.state_dict(),
                weights=eng.second_sampler.weights.clone(),
                shard=list(eng.random_sampler),
                model=trainer.model.state_dict(),
                mAP=trainer.metrics[-1]["mAP"],
            ),
            f"{out}/rank{rank}.pt",
        )
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except BaseException:  # pragma: no cover - reported by the parent
        Path(f"{out}/rank{rank}.err").write_text(traceback.format_exc())
        raise


def _run(world: int, values: dict, out: Path, *, frozen: bool = False, resume: str | None = None,
         stop_after: int | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, values, str(out), frozen, resume, stop_after))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    errors = [f.read_text() for f in out.glob("*.err")]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    from balancemix_timm.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("ddp-demo")
    make_demo_dataset(root, num_train=TINY["demo_num_train"], num_val=TINY["demo_num_val"], num_classes=20,
                      image_size=32, seed=0)
    return str(root)


def _values(data_root: str, out: Path, **kw) -> dict:
    v = dict(TINY, data_root=data_root, output_dir=str(out), run_name="run")
    v.update(kw)
    return v


ENGINE_KEYS = ("probs", "clean_prob", "refined_labels", "state", "seen")


def test_frozen_two_rank_epoch_matches_one_rank(data_root, tmp_path):
    # lr 0, BN statistics frozen and deterministic transforms: the recorded predictions depend
    # only on the sample, so the gathered 2-rank state must equal the 1-rank one.
    values = _values(data_root, tmp_path, lr=0.0, randaugment=False, cutout=False)
    one = _run(1, dict(values, output_dir=str(tmp_path / "w1")), tmp_path / "o1", frozen=True)
    two = _run(2, dict(values, output_dir=str(tmp_path / "w2")), tmp_path / "o2", frozen=True)
    ref = one[0]["engine"]
    for r in two:
        for key in ENGINE_KEYS:
            a, b = ref[key], r["engine"][key]
            if a.is_floating_point():
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=key)
            else:
                assert torch.equal(a, b), key
        torch.testing.assert_close(r["weights"], one[0]["weights"], rtol=1e-6, atol=1e-9)
        assert abs(r["mAP"] - one[0]["mAP"]) < 1e-3
    # Shards of the random stream: disjoint positions covering the epoch's permutation.
    s0, s1 = two[0]["shard"], two[1]["shard"]
    n = TINY["demo_num_train"]
    assert len(s0) == len(s1) == n // 2
    assert sorted(s0 + s1) == list(range(n))


def test_real_two_rank_run_ranks_agree_and_resume_on_one_rank(data_root, tmp_path):
    values = _values(data_root, tmp_path, epochs=2, warmup_epochs=1, lr=0.05)
    two = _run(2, values, tmp_path / "o2", stop_after=1)
    for key in ENGINE_KEYS:
        assert torch.equal(two[0]["engine"][key], two[1]["engine"][key]), key
    assert torch.equal(two[0]["weights"], two[1]["weights"])
    # DDP keeps parameters identical; BN running statistics are per rank between forwards
    # (DDP broadcasts rank 0's buffers at each forward), so only parameters are compared.
    for name, a in two[0]["model"].items():
        if "running_" not in name and "num_batches_tracked" not in name:
            torch.testing.assert_close(two[1]["model"][name], a, msg=name)
    # Resume the 2-rank checkpoint with one process.
    ckpt = str(Path(values["output_dir"]) / "run" / "last.pth")
    one = _run(1, values, tmp_path / "o1", resume=ckpt)
    assert one[0]["engine"]["epoch"] == 1
    assert bool(one[0]["engine"]["seen"].all())
