"""train_classifier: weighted loss semantics, data paths, closure optimizers, resume, logging, errors."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from genlib.data import (
    WeightedConcatDataset,
    WeightedTensorDataset,
    load_digits_sklearn,
    semi_supervised_split,
)
from genlib.train import (
    Checkpointer,
    MetricsLogger,
    MLPClassifier,
    evaluate_accuracy,
    predict_logits,
    read_jsonl,
    train_classifier,
    weighted_cross_entropy,
)

SGD = functools.partial(torch.optim.SGD, momentum=0.0)
FULL = dict(epochs=8, lr=0.5, batch_size=1024, optimizer=SGD, device="cpu", progress=False)


def _blobs(n, seed, k=3, d=6):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 2.0 * F.one_hot(y, d).float()
    return x, y


def _model(seed=0, d=6, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k))


def _close(a: nn.Module, b: nn.Module, atol=1e-6) -> bool:
    return all(torch.allclose(p, q, atol=atol) for p, q in zip(a.parameters(), b.parameters()))


def test_weighted_cross_entropy_matches_reference():
    logits, y = torch.randn(10, 4), torch.randint(0, 4, (10,))
    w = torch.rand(10)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(weighted_cross_entropy(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(weighted_cross_entropy(logits, y, w, mean_weight=0.3), (w * ce).sum() / (10 * 0.3))
    # batch estimates average to the dataset objective sum(w ce) / sum(w) over any equal-size partition
    parts = [weighted_cross_entropy(logits[i : i + 2], y[i : i + 2], w[i : i + 2], float(w.mean()))
             for i in range(0, 10, 2)]
    assert torch.allclose(torch.stack(parts).mean(), (w * ce).sum() / w.sum())


def test_zero_weights_ignore_examples():
    x, y = _blobs(40, seed=1)
    junk_x, junk_y = _blobs(20, seed=2)
    junk_y = (junk_y + 1) % 3  # wrong labels: they would pull the model away if they counted
    start = _model()
    plain, _ = train_classifier(copy.deepcopy(start), (x, y), **FULL)
    zero_w = torch.cat([torch.ones(40), torch.zeros(20)])
    both = (torch.cat([x, junk_x]), torch.cat([y, junk_y]))
    weighted, _ = train_classifier(copy.deepcopy(start), both, weights=zero_w, **FULL)
    assert _close(plain, weighted)
    counted, _ = train_classifier(copy.deepcopy(start), both, **FULL)
    assert not _close(plain, counted, atol=1e-3)  # control: the junk does matter when weighted 1


def test_weight_two_equals_duplicate():
    x, y = _blobs(30, seed=3)
    start = _model(1)
    dup, _ = train_classifier(copy.deepcopy(start), (torch.cat([x, x[:5]]), torch.cat([y, y[:5]])), **FULL)
    w = torch.ones(30)
    w[:5] = 2.0
    weighted, _ = train_classifier(copy.deepcopy(start), (x, y, w), **FULL)
    assert _close(dup, weighted)


class _Listed(Dataset):
    """Not tensor-backed: forces the DataLoader path."""

    def __init__(self, x, y, w):
        self.x, self.y, self.w = x, y, w

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.w[i]


def test_mixed_dataset_paths_agree_and_coefficient_zero_drops_synthetic():
    x, y = _blobs(40, seed=4)
    sx, sy = _blobs(25, seed=5)
    sw = torch.rand(25) + 0.5
    start = _model(2)
    real_only, _ = train_classifier(copy.deepcopy(start), (x, y), **FULL)
    parts = [WeightedTensorDataset(x, y), WeightedTensorDataset(sx, sy, sw)]
    mixed0 = WeightedConcatDataset(parts, [1.0, 0.0])
    m0, _ = train_classifier(copy.deepcopy(start), mixed0, **FULL)
    assert _close(real_only, m0)
    # the batched-tensor path and the DataLoader path give the same training (full batches)
    mixed = WeightedConcatDataset([WeightedTensorDataset(x, y), _Listed(sx, sy, sw)], [1.0, 0.7])
    assert mixed.as_tensors() is None
    tensor_path, h1 = train_classifier(copy.deepcopy(start), (torch.cat([x, sx]), torch.cat([y, sy]),
                                                              torch.cat([torch.ones(40), 0.7 * sw])), **FULL)
    loader_path, h2 = train_classifier(copy.deepcopy(start), mixed, **FULL)
    assert _close(tensor_path, loader_path, atol=1e-5)
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-5)


class _ClosureSGD(torch.optim.Optimizer):
    """Differentiates the closure itself, like PSGD's hvp mode: train_classifier must not call backward."""

    needs_closure = True

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure):
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.enable_grad():
            loss = closure()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                assert p.grad is None  # nobody called backward
                p.add_(g, alpha=-self.param_groups[0]["lr"])
        return loss


def test_closure_optimizer_matches_backward_sgd():
    x, y = _blobs(50, seed=6)
    start = _model(3)
    kw = dict(epochs=3, lr=0.1, batch_size=16, device=None, progress=False, seed=7)  # the default device
    a, ha = train_classifier(copy.deepcopy(start), (x, y), optimizer=SGD, **kw)
    b, hb = train_classifier(copy.deepcopy(start), (x, y), optimizer=_ClosureSGD, **kw)
    assert _close(a, b) and ha["train_loss"] == pytest.approx(hb["train_loss"])


def test_learns_digits_and_logs(tmp_path):
    x, y = load_digits_sklearn()
    s = semi_supervised_split(y, n_labeled=1000, n_test=500, seed=0)
    model = MLPClassifier((1, 8, 8), hidden=(128,))
    logger = MetricsLogger(tmp_path, name="run")
    model, h = train_classifier(
        model, (x[s.labeled], y[s.labeled]), epochs=10, lr=3e-3, batch_size=64, device="cpu",
        eval_data=(x[s.test], y[s.test]), logger=logger, progress=True,
    )
    assert h["eval_accuracy"][-1] > 0.9 and h["train_loss"][-1] < 0.5 * h["train_loss"][0]
    assert evaluate_accuracy(model, (x[s.test], y[s.test])) == h["eval_accuracy"][-1]
    assert model.training  # evaluation restored the mode
    records = read_jsonl(tmp_path / "run.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, 11))
    assert [r["eval_accuracy"] for r in records] == h["eval_accuracy"]
    assert (tmp_path / "run.csv").read_text().splitlines()[0] == "epoch,train_loss,eval_accuracy,seconds"


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_checkpointed_training_resumes_exactly(tmp_path, device):
    x, y = _blobs(64, seed=8)
    kw = dict(lr=1e-2, batch_size=16, device=device, progress=False, seed=3)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    ref, href = train_classifier(net(), (x, y), epochs=4, **kw)
    train_classifier(net(), (x, y), epochs=2, checkpointer=Checkpointer(tmp_path, every=1), **kw)  # "stopped"
    resumed, h = train_classifier(net(), (x, y), epochs=4, checkpointer=Checkpointer(tmp_path, every=1), **kw)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), resumed.parameters()))
    assert h["epoch"] == [1, 2, 3, 4] and h["train_loss"] == href["train_loss"]


def test_evaluate_and_predict_on_known_model():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third is predicted 0
    assert evaluate_accuracy(model, (x, y), batch_size=3) == 0.75
    assert torch.equal(predict_logits(model, x, batch_size=3), x)


def test_bad_arguments():
    x, y = _blobs(10, seed=9)
    m = _model()
    with pytest.raises(ValueError, match="factory"):
        train_classifier(m, (x, y), optimizer=torch.optim.SGD(m.parameters(), lr=0.1), progress=False)
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        train_classifier(m, (x, y), lr=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"weights must have shape \(10,\)"):
        train_classifier(m, (x, y), weights=torch.ones(3), progress=False)
    with pytest.raises(ValueError, match="all training weights are zero"):
        train_classifier(m, (x, y), weights=torch.zeros(10), progress=False)
    with pytest.raises(ValueError, match="already carries weights"):
        train_classifier(m, (x, y, torch.ones(10)), weights=torch.ones(10), progress=False)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        train_classifier(m, (x, y - 1), progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train_classifier(m, (x, y), epochs=0, progress=False)
    with pytest.raises(RuntimeError, match="train_loss became non-finite by epoch 1"):
        train_classifier(m, (x * float("nan"), y), progress=False, device="cpu")


def test_genlib_psgd_closure_and_whiten_modes_and_exact_resume(tmp_path):
    optim = pytest.importorskip("genlib.optim")
    if not hasattr(optim, "Kron"):
        pytest.skip("genlib.optim.Kron not available yet")
    x, y = _blobs(128, seed=10)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))

    kw = dict(lr=0.05, batch_size=32, device="cpu", progress=False)
    for curvature in ("whiten", "hvp"):  # hvp: step(closure) with no backward() from the trainer
        kron = functools.partial(optim.Kron, curvature=curvature)
        _, h = train_classifier(net(), (x, y), epochs=3, optimizer=kron, **kw)
        assert h["train_loss"][-1] < h["train_loss"][0]
    # the optimizer's own generators (refit coin, probe vectors) resume with it
    kron = functools.partial(optim.Kron, curvature="hvp", update_probability=0.5)
    ref, href = train_classifier(net(), (x, y), epochs=4, optimizer=kron, **kw)
    kw["checkpointer"] = Checkpointer(tmp_path, every=1)
    train_classifier(net(), (x, y), epochs=2, optimizer=kron, **kw)  # stopped after 2 epochs
    resumed, h = train_classifier(net(), (x, y), epochs=4, optimizer=kron, **kw)
    assert all(torch.equal(p, q) for p, q in zip(ref.parameters(), resumed.parameters()))
    assert h["train_loss"] == href["train_loss"]


def test_resumed_training_does_not_log_epochs_twice(tmp_path):
    from genlib.train import MetricsLogger, read_jsonl

    x, y = _blobs(64, seed=8)
    kw = dict(lr=1e-2, batch_size=16, device="cpu", progress=False, seed=3)
    ckpt = tmp_path / "ckpt"
    train_classifier(nn.Linear(6, 3), (x, y), epochs=3, checkpointer=Checkpointer(ckpt, every=2),
                     logger=MetricsLogger(tmp_path, "run"), **kw)
    # killed after logging epoch 3 but before its checkpoint: only epoch 2's checkpoint survives
    for p in Checkpointer(ckpt).checkpoints()[1:]:
        p.unlink()
    train_classifier(nn.Linear(6, 3), (x, y), epochs=4, checkpointer=Checkpointer(ckpt, every=2),
                     logger=MetricsLogger(tmp_path, "run", resume=True), **kw)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run.jsonl")] == [1, 2, 3, 4]
