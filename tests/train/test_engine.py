"""genlib.train.Engine and StepBatches on one process: batches as a pure function of the step (shards that
add up to the global batch, epochs that visit every example once), mixed precision, compiled losses without
graph breaks, closure optimizers, aligned histories and clear errors."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from genlib.optim import Kron
from genlib.train.batches import StepBatches, step_loader
from genlib.train.engine import Engine


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _engine(model, **kw):
    def loss_fn(batch):
        xb, yb = batch["d"]
        loss = nn.functional.cross_entropy(model(xb), yb)
        return loss, {"loss": loss}

    opt = kw.pop("opt", None) or torch.optim.SGD(model.parameters(), lr=0.1)
    return Engine(model, opt, loss_fn, device="cpu", progress=False, **kw)


def test_rank_shards_make_up_the_global_batch_at_any_step():
    x, y = _data()
    full = StepBatches({"d": (x, y)}, 16, seed=3)
    shards = [StepBatches({"d": (x, y)}, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in (0, 7, 10_000):
        whole = full[step]["d"][0]
        a, b = (s[step]["d"][0] for s in shards)
        assert torch.equal(torch.stack([a, b], 1).reshape(-1, 6), whole)  # rank r: positions r, r + 2, ...
        again = StepBatches({"d": (x, y)}, 16, seed=3)  # a pure function of (seed, step)
        assert torch.equal(again[step]["d"][0], whole)
    assert not torch.equal(full[0]["d"][0], StepBatches({"d": (x, y)}, 16, seed=4)[0]["d"][0])


def test_epochs_visit_every_example_once_and_datasets_stream():
    x, y = _data(50)

    class Items(Dataset):  # a map-style dataset read example by example
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return x[i], y[i]

    for source in ((x, y), Items()):
        sb = StepBatches({"d": source}, 16, seed=0, order="epochs")
        assert sb.steps_per_epoch() == 4  # 16 + 16 + 16 + 2
        seen = torch.cat([sb[s]["d"][0] for s in range(4)])
        assert torch.equal(seen[seen[:, 0].argsort()], x[x[:, 0].argsort()])
        assert not torch.equal(sb[0]["d"][0], sb[4]["d"][0][:16])  # a new permutation per epoch
    loader = step_loader(StepBatches({"d": Items()}, 8, seed=0), 5, 9, num_workers=2)
    assert [b["d"][0].shape[0] for b in loader] == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="batch_size of 'd' .* at least world_size"):
        StepBatches({"d": x}, 1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="batch_size must name every source"):
        StepBatches({"d": x, "e": x}, {"d": 4})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_in_fp32_weights(precision):
    x, y = _data()
    ref, model = _net(), _net()
    sb = StepBatches({"d": (x, y)}, 16, seed=0)
    h_ref = _engine(ref).fit(lambda a, b: step_loader(sb, a, b), 30)
    engine = _engine(model, precision=precision)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    h = engine.fit(lambda a, b: step_loader(sb, a, b), 30)
    assert seen[0] == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]  # autocast ran
    assert (engine.scaler is not None) == (precision == "fp16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert h["loss"][-1] < h["loss"][0] and abs(h["loss"][-1] - h_ref["loss"][-1]) < 0.05


def test_compiled_loss_has_no_graph_breaks_and_matches_eager():
    from torch._dynamo.utils import counters

    from genlib.likelihoods import Gaussian
    from genlib.models import VAE
    from genlib.nn import MLPDecoder, MLPEncoder

    x, _ = _data()

    def run(compile):
        torch.manual_seed(0)
        vae = VAE(MLPEncoder((6,), 2, hidden=(16,)), MLPDecoder(2, (6,), hidden=(16,)), Gaussian(0.5))

        def loss_fn(batch):
            loss = vae.elbo(batch["x"]).loss
            return loss, {"loss": loss}

        engine = Engine(vae, torch.optim.Adam(vae.parameters(), lr=1e-2), loss_fn, device="cpu",
                        progress=False, compile=compile)
        sb = StepBatches({"x": x}, 16, seed=0)
        torch.manual_seed(1)
        return engine.fit(lambda a, b: step_loader(sb, a, b), 5)["loss"]

    torch._dynamo.reset()
    counters.clear()
    compiled = run("aot_eager")
    assert dict(counters["graph_break"]) == {}
    assert compiled == pytest.approx(run(False), rel=1e-5)


def test_compiled_optimizer_steps_are_one_graph_and_match_eager():
    # Kron with a refit schedule (its fits under torch.cond) and Adam on two parameter sets, every step
    # compiled: no graph break of genlib's, and the run equals the eager one.
    from torch._dynamo.utils import counters

    from genlib.optim import ExponentialDecaySchedule, Kron

    x, y = _data()

    def run(compile_optimizers):
        torch.manual_seed(0)
        model = _net()
        body, head = list(model[0].parameters()), list(model[2].parameters())
        opts = [Kron(body, lr=3e-3, update_probability=ExponentialDecaySchedule(1.0, 0.3, 10)),
                torch.optim.Adam(head, lr=1e-2)]
        engine = _engine(model, opt=opts, compile="aot_eager", compile_optimizers=compile_optimizers)
        sb = StepBatches({"d": (x, y)}, 16, seed=0)
        h = engine.fit(lambda a, b: step_loader(sb, a, b), 25)["loss"]
        return h, opts[0].preconditioners[0][0].num_updates

    torch._dynamo.reset()
    counters.clear()
    (compiled, fits), (eager, eager_fits) = run(True), run(False)
    # torch's Adam.step breaks its graph on purpose around the step (torch._dynamo.graph_break() in
    # torch.optim, so that no_grad is respected); PSGD's step has none
    assert all("User-inserted graph break" in reason for reason in counters["graph_break"])
    assert sum(counters["graph_break"].values()) == 1
    assert fits == eager_fits and 5 < fits < 25
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled[-1] < compiled[0]
    with pytest.raises(ValueError, match="compile_optimizers"):
        model = _net()
        _engine(model, opt=Kron(model.parameters(), curvature="hvp"), compile_optimizers=True)
    with pytest.raises(ValueError, match="compile_optimizers must be True or False"):
        _engine(_net(), compile_optimizers="yes")


def test_closure_optimizers_see_one_prepared_batch_and_mixed_modes_are_refused():
    x, y = _data()
    model = _net()
    calls = []

    def prepare(batch):
        calls.append(1)
        return batch

    engine = _engine(model, opt=Kron(model.parameters(), lr=0.05, curvature="hvp"), grad_clip=0.5)
    engine.prepare = prepare
    sb = StepBatches({"d": (x, y)}, 16, seed=0)
    h = engine.fit(lambda a, b: step_loader(sb, a, b), 20)
    assert len(calls) == 20 and h["loss"][-1] < h["loss"][0]
    assert engine.optimizers[0].param_groups[0]["grad_clip_max_norm"] == 0.5  # grad_clip is PSGD's bound
    a, b = _net(), _net()
    mixed = [Kron(a.parameters(), curvature="hvp"), torch.optim.SGD(b.parameters(), lr=0.1)]
    with pytest.raises(ValueError, match="same curvature mode"):
        Engine(nn.ModuleList([a, b]), mixed, lambda p: (None, {}), device="cpu")
    with pytest.raises(ValueError, match="precision='fp16' needs a GradScaler"):
        _engine(_net(), opt=Kron(_net().parameters(), curvature="hvp"), precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        _engine(_net(), precision="fp8")


def test_history_aligns_optional_metrics_and_evaluations_and_names_divergence():
    x, y = _data()
    model = _net()
    calls = {"n": 0}

    def loss_fn(batch):
        xb, yb = batch["d"]
        loss = nn.functional.cross_entropy(model(xb), yb)
        calls["n"] += 1
        extra = {"late": loss * 2} if calls["n"] > 3 else {}  # a metric that appears later (augmentation)
        return loss, {"loss": loss, **extra}

    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, device="cpu", progress=False)
    sb = StepBatches({"d": (x, y)}, 16, seed=0)
    h = engine.fit(lambda a, b: step_loader(sb, a, b), 6, evaluate=lambda: {"eval_acc": 0.5}, eval_every=2)
    assert h["iter"] == [1, 2, 3, 4, 5, 6] and len(h["late"]) == 6
    assert all(math.isnan(v) for v in h["late"][:3]) and h["late"][3] == pytest.approx(2 * h["loss"][3])
    assert h["eval_iter"] == [2, 4, 6] and h["eval_acc"] == [0.5] * 3

    def diverging(batch):
        loss = torch.tensor(float("nan"), requires_grad=True)
        return loss, {"ebm_loss": loss}

    bad = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), diverging, device="cpu", progress=False,
                 divergence_hint="lower ebm_lr")
    with pytest.raises(RuntimeError, match="ebm_loss became non-finite by iter 1: lower ebm_lr"):
        bad.fit(lambda a, b: step_loader(sb, a, b), 3)
