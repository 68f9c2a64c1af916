"""The optimizer constructors are fully typed, and the shared ``**kwargs`` type matches PSGD's options."""

import inspect
import typing

import pytest
import torch

from genlib.optim import LRA, PSGD, Dense, Diag, Kron, XMat
from genlib.optim.optimizers import PSGDOptions


@pytest.mark.parametrize("cls", [PSGD, Kron, Diag, LRA, XMat, Dense])
def test_every_constructor_argument_and_the_return_are_annotated(cls):
    hints = typing.get_type_hints(cls.__init__)  # also fails if an annotation does not resolve
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert set(params) <= set(hints), set(params) - set(hints)
    assert hints["return"] is type(None)


def test_psgd_options_are_exactly_psgds_keyword_only_arguments():
    keyword_only = {
        name for name, p in inspect.signature(PSGD.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(typing.get_type_hints(PSGDOptions)) == keyword_only


def test_family_forwards_the_shared_options():
    w = torch.nn.Parameter(torch.ones(4))
    opt = XMat([w], lr=0.5, momentum=0.3, seed=7)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0.3
    assert opt.seed == 7
