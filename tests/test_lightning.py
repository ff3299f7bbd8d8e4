"""PyTorch Lightning (the ``test`` extra): a LightningModule whose ``configure_optimizers`` returns a diyopt
optimizer (``to_torch``) and an ``lr_scheduler`` trains exactly as with the torch.optim class, and its
checkpoint resumes to the same parameters as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

import diyopt

L = pytest.importorskip("lightning")

DATA = torch.utils.data.TensorDataset(
    torch.randn(32, 4, generator=torch.Generator().manual_seed(0)),
    torch.randn(32, 1, generator=torch.Generator().manual_seed(1)),
)


class Regression(L.LightningModule):
    def __init__(self, use_diyopt: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.use_diyopt = use_diyopt

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        if self.use_diyopt:
            opt = diyopt.to_torch(diyopt.optim.adamw(lr=1e-2, weight_decay=0.1), self.net)
        else:
            opt = torch.optim.AdamW(self.net.parameters(), lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _trainer(max_epochs: int, **kw):
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _loader():
    return torch.utils.data.DataLoader(DATA, batch_size=8, shuffle=False)


def _params(module):
    return [p.detach().clone() for p in module.net.parameters()]


def test_lightning_trains_a_diyopt_optimizer_as_torch_optim():
    ours, ref = Regression(True), Regression(False)
    start = _params(ours)
    _trainer(3).fit(ours, _loader())
    _trainer(3).fit(ref, _loader())
    for p, q, s in zip(_params(ours), _params(ref), start):
        assert not torch.equal(p, s)  # it trained
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lightning_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    whole = Regression()
    _trainer(4).fit(whole, _loader())

    first = Regression()
    trainer = _trainer(2)
    trainer.fit(first, _loader())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = Regression()
    _trainer(4).fit(resumed, _loader(), ckpt_path=tmp_path / "half.ckpt")
    for p, q in zip(_params(resumed), _params(whole)):
        assert torch.equal(p, q)
