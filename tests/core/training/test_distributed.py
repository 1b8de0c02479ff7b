"""DDP helpers: single-process behaviour, and two CPU processes over gloo launched by torchrun.

The torchrun run (``python -m torch.distributed.run --standalone --nproc_per_node 2 THIS_FILE OUT``)
executes ``_worker`` below in each rank: a tiny model through the helpers, the tiny fraud training
and the tiny nodule training. Each rank writes ``OUT/<task>-rank<r>.json`` with a digest of its
final parameters and digests of the data it trained on; the tests check that the digests of the
parameters are equal and those of the data are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.training import distributed

REPO = Path(__file__).resolve().parents[3]
TASKS = ("tiny", "fraud", "nodule")


# --- one process: every helper is a no-op -----------------------------------------------------------
def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = distributed.init_distributed()
    assert run == distributed.DistInfo() and run.is_main and not run.distributed
    net = torch.nn.Linear(3, 2)
    assert distributed.wrap_ddp(net) is net and distributed.unwrap(net) is net
    assert distributed.rank_seed(7) == 7
    assert distributed.on_main(lambda x: x + 1)(1) == 2
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    batches = distributed.shard_epochs(lambda epoch: [epoch, epoch + 1])
    assert list(batches(3)) == [3, 4]
    assert distributed.is_main() and distributed.local_device("cpu") == torch.device("cpu")
    distributed.barrier()
    distributed.cleanup()


def test_shard_pads_or_drops_to_equal_shares() -> None:
    items = list(range(5))
    shares = [distributed.shard(items, rank=r, world_size=2) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 0]]  # padded by wrapping around, like DistributedSampler
    shares = [distributed.shard(items, rank=r, world_size=2, pad=False) for r in range(2)]
    assert shares == [[0, 2], [1, 3]]
    assert distributed.shard([], rank=1, world_size=2) == []


def test_parameter_digest_sees_parameters_not_buffers() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = distributed.parameter_digest(net)
    net.train()(torch.randn(8, 3))  # updates running statistics (buffers) only
    assert distributed.parameter_digest(net) == before
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-6
    assert distributed.parameter_digest(net) != before


# --- two processes under torchrun --------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run every task of ``_worker`` in two gloo processes once (about 30 s); the output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU even where a GPU exists
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, __file__, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def _ranks(out: Path, task: str) -> list[dict]:
    return [json.loads((out / f"{task}-rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_ddp_ranks_stay_in_sync_on_different_data(ddp_run: Path, task: str) -> None:
    out = ddp_run
    r0, r1 = _ranks(out, task)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["params"] == r1["params"], f"{task}: the replicas diverged"
    assert r0["steps"] == r1["steps"] > 0
    # disjoint shares, but for one batch that ``shard`` may repeat to even them out
    assert len(set(r0["data"]) & set(r1["data"])) <= 1, f"{task}: the ranks trained on the same data"


@pytest.mark.slow
def test_ddp_details(ddp_run: Path) -> None:
    out = ddp_run
    tiny = _ranks(out, "tiny")
    assert tiny[0]["init"] != tiny[1]["init"]  # seeded apart; DDP broadcast rank 0's weights
    fraud, nodule = _ranks(out, "fraud"), _ranks(out, "nodule")
    assert fraud[0]["val"] == fraud[1]["val"]  # rank 0 validated, the others received its metrics
    assert nodule[0]["best_step"] == nodule[1]["best_step"]
    assert (out / "nodule-model" / "model_card.json").is_file()  # rank 0 saved
    assert (out / "fraud-model").is_dir()
    assert "val_cpm" in nodule[0]["metrics"] and "val_cpm" not in nodule[1]["metrics"]


# --- what each rank runs -----------------------------------------------------------------------------
def _digest(array) -> str:
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()[:16]


def _tiny(out: Path, run: distributed.DistInfo) -> dict:
    torch.manual_seed(run.rank)  # different initial weights: DDP must broadcast rank 0's
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    init = distributed.parameter_digest(net)
    model = distributed.wrap_ddp(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))  # the same on every rank
    rows = distributed.shard(range(len(data)))
    seen = []
    for i in rows:
        x = data[i : i + 1]
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(f"row{i}")
    return {"init": init, "params": distributed.parameter_digest(net), "steps": len(rows), "data": seen}


def _fraud(out: Path, run: distributed.DistInfo) -> dict:
    import apps.fraud.train as fraud_train
    from apps.fraud.model import FraudModelConfig, FraudNet
    from apps.fraud.simulate import simulate

    seen: list[str] = []
    nets: list[FraudNet] = []
    load_rows, net_class = fraud_train.load_rows, fraud_train.FraudNet

    def recording(prepared, rows, device="cpu"):
        seen.append(_digest(rows.astype("int64")))
        return load_rows(prepared, rows, device)

    class Recorded(FraudNet):
        def __init__(self, config: FraudModelConfig) -> None:
            super().__init__(config)
            nets.append(self)

    # training batches only go through train.load_rows (validation loads its rows in model.py)
    fraud_train.load_rows, fraud_train.FraudNet = recording, Recorded
    df = simulate(n_customers=40, n_terminals=50, days=20, seed=3, fraud_rate=0.05)
    config = fraud_train.FraudTrainConfig(
        epochs=2, warmup_days=5, delay_days=1, val_days=5, neg_rate=0.5, lr=1e-2, baselines=False, patience=0
    )
    model_config = FraudModelConfig(hidden=16, seq_hidden=8, gnn_hidden=8, gnn_layers=1, gnn_heads=1)
    try:
        report = fraud_train.train(df, config, model_config, out_dir=out / "fraud-model")
    finally:
        fraud_train.load_rows, fraud_train.FraudNet = load_rows, net_class
    params = distributed.parameter_digest(nets[0])
    return {"params": params, "steps": len(seen), "data": seen, "val": report.val}


def _nodule(out: Path, run: distributed.DistInfo) -> dict:
    import apps.nodule.train as nodule_train

    seen: list[str] = []
    batch = nodule_train._batch

    def recording(*args, **kwargs):
        x, y = batch(*args, **kwargs)
        seen.append(_digest(x.contiguous().numpy()))
        return x, y

    nodule_train._batch = recording
    config = nodule_train.NoduleTrainConfig(
        model="tiny",
        phantom_size="tiny",
        n_train=2,
        n_fp=1,
        n_val=1,
        steps=4,
        val_every=4,
        crops_per_volume=2,
    )
    model, metrics = nodule_train.train(config, out / "nodule-model", device="cpu")
    nodule_train._batch = batch
    return {
        "params": distributed.parameter_digest(model.net),
        "steps": len(seen),
        "data": seen,
        "best_step": metrics["best_step"],
        "metrics": sorted(metrics),
    }


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    run = distributed.init_distributed()
    assert run.distributed and run.backend == "gloo", run
    for task, fn in (("tiny", _tiny), ("fraud", _fraud), ("nodule", _nodule)):
        started = time.perf_counter()
        result = fn(out, run)
        distributed.barrier()
        result.update(
            rank=run.rank, world_size=run.world_size, seconds=round(time.perf_counter() - started, 2)
        )
        (out / f"{task}-rank{run.rank}.json").write_text(json.dumps(result))
    distributed.cleanup()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
