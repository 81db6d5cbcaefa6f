import pytest
import torch

from conftest import assert_close
from rnnkit import OutputLayer


def test_softmax_head_is_the_textbook_output_layer():
    head = OutputLayer(4, 3, activation="softmax")
    h = torch.randn(2, 5, 4)
    a = h @ head.linear.weight.T + head.linear.bias  # W_hy h + b_y
    y = head(h)
    assert_close(y, torch.exp(a) / torch.exp(a).sum(-1, keepdim=True))
    assert_close(y.sum(-1), torch.ones(2, 5))
    assert_close(head.log_prob(h), torch.log(y))
    assert_close(head.logits(h), a)


def test_identity_head_and_errors():
    head = OutputLayer(4, 2, activation="identity")
    h = torch.randn(3, 4)
    assert_close(head(h), head.logits(h))
    with pytest.raises(ValueError, match="log_prob needs activation='softmax'"):
        head.log_prob(h)
    with pytest.raises(ValueError, match="activation must be 'softmax' or 'identity', got 'sigmoid'"):
        OutputLayer(4, 2, activation="sigmoid")
