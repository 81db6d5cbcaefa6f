"""rnnkit's dropout (counter-based mask): SplitMix64 against its published outputs and a plain
integer implementation, the native kernel equal to the torch reference, the statistics and the
gradient of dropout, seeding, and the layers and char-LM that use it."""

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import LSTM
from rnnkit import dropout as D
from rnnkit.apps.charlm.model import CharLM, CharLMConfig
from rnnkit.kernels import native

MASK64 = (1 << 64) - 1


def splitmix64_int(key: int, i: int) -> int:
    """The textbook SplitMix64 (Steele, Lea and Flood 2014; Vigna's C code), in Python integers:
    the i-th output (from 0) of the generator seeded with key."""
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def as_uint64(values: torch.Tensor) -> list[int]:
    return [int(v) & MASK64 for v in values]


def test_splitmix64_gives_the_published_outputs_for_seed_zero():
    assert as_uint64(D.splitmix64(0, 3)) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("key", [0, 1, 2**63 - 1, -(2**63), -12345, 0xDEADBEEFCAFEBABE])
def test_splitmix64_in_torch_integer_ops_equals_the_plain_integer_code(key):
    """torch's int64 arithmetic (wrapping multiply, arithmetic shift made logical) gives uint64's."""
    got = as_uint64(D.splitmix64(key, 2000))
    assert got == [splitmix64_int(key & MASK64, i) for i in range(2000)]


def test_the_mask_keeps_an_element_iff_the_high_32_bits_reach_the_threshold():
    key, p = 987654321, 0.3
    x = torch.arange(1.0, 401.0)
    y = D.reference(x, key, p)
    scaled = x * torch.tensor(1 / (1 - p))
    for i in range(400):
        kept = splitmix64_int(key, i) >> 32 >= round(p * 2**32)
        assert y[i].item() == (scaled[i].item() if kept else 0.0), i


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernel_equals_the_reference(dtype, threads):
    """Bit for bit: sizes below, at and past the kernel's parallel grain (2^15) and odd ones."""
    assert native.available()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(1,), (7, 3), (1 << 15,), (3, 11, 1001), (200, 64, 17)]:
            x = torch.randn(shape).to(dtype)
            for p in (0.1, 0.5, 0.9):
                key = int(torch.randint(-(2**63), 2**63 - 1, ()))
                assert torch.equal(D.apply_mask(x, key, p), D.reference(x, key, p)), (shape, p)
    finally:
        torch.set_num_threads(before)


def test_a_non_contiguous_input_is_masked_in_contiguous_order():
    x = torch.randn(40, 30).t()
    assert torch.equal(D.apply_mask(x, 5, 0.4), D.reference(x.contiguous(), 5, 0.4))
    assert torch.equal(D.apply_mask(x, 5, 0.4), D.apply_mask(x.contiguous(), 5, 0.4))


def test_without_the_kernel_the_reference_gives_the_same_masks(monkeypatch):
    x = torch.randn(64, 300)
    torch.manual_seed(3)
    fast = D.dropout(x, 0.3)
    monkeypatch.setattr(native, "extension", lambda: None)
    torch.manual_seed(3)
    assert torch.equal(D.dropout(x, 0.3), fast)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_dropout_drops_a_fraction_p_and_scales_the_rest_by_one_over_one_minus_p(p):
    n = 1_000_000
    x = torch.rand(n) + 1.0  # no zeros of its own
    y = D.dropout(x, p)
    kept = y != 0
    sd = (p * (1 - p) / n) ** 0.5
    assert abs((1 - kept.float().mean().item()) - p) < 5 * sd
    torch.testing.assert_close(y[kept], x[kept] * (1 / (1 - p)), rtol=1e-6, atol=0)
    assert abs(y.mean().item() - x.mean().item()) < 0.01, "the expected value is kept"


def test_masks_look_independent():
    """Neighbours (in the same row and across rows) and successive calls are uncorrelated."""
    keep = (D.dropout(torch.ones(1000, 1000), 0.5) != 0).float()
    for a, b in [(keep[:, :-1], keep[:, 1:]), (keep[:-1], keep[1:])]:
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01
    again = (D.dropout(torch.ones(1000, 1000), 0.5) != 0).float()
    assert abs(torch.corrcoef(torch.stack([keep.flatten(), again.flatten()]))[0, 1].item()) < 0.01


def test_seeded_calls_repeat_and_a_generator_can_be_given():
    x = torch.randn(50, 40)
    torch.manual_seed(7)
    a = D.dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(D.dropout(x, 0.5), a)
    assert not torch.equal(D.dropout(x, 0.5), a)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(D.dropout(x, 0.5, generator=g1), D.dropout(x, 0.5, generator=g2))


def test_the_gradient_is_the_same_mask_and_scale():
    x = torch.randn(30, 20, requires_grad=True)
    torch.manual_seed(0)
    y = D.dropout(x, 0.4)
    g = torch.randn_like(y)
    y.backward(g)
    keep = y.detach() != 0
    torch.testing.assert_close(x.grad, torch.where(keep, g / 0.6, torch.zeros(())), rtol=1e-6, atol=0)


def test_gradcheck_and_gradgradcheck_in_float64():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return D._CounterDropout.apply(x, 1234, 0.3)  # a fixed key: the same mask on every call

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_module_is_a_torch_dropout_and_off_in_eval():
    module = rnnkit.Dropout(0.3)
    assert isinstance(module, nn.Dropout) and module.p == 0.3
    x = torch.randn(10, 10)
    assert torch.equal(module.eval()(x), x)
    assert torch.equal(D.dropout(x, 0.0), x)
    assert torch.equal(D.dropout(x, 1.0), torch.zeros_like(x))
    assert not torch.equal(module.train()(x), x)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: D.dropout(torch.ones(3), 1.5), r"p must be a probability in \[0, 1\], got 1.5"),
        (lambda: D.dropout(torch.ones(3), -0.1), r"p must be a probability in \[0, 1\], got -0.1"),
        (lambda: rnnkit.Dropout(0.2, inplace=True), "inplace must be False"),
    ],
)
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_driver_drops_between_layers_with_it():
    """A 3-layer LSTM in training equals its layers run one by one with ``dropout`` between them,
    the keys drawn from the same seed in the same order."""
    p = 0.4
    layer = LSTM(5, 6, num_layers=3, dropout=p).train()
    singles = []
    for k in range(3):
        single = LSTM(5 if k == 0 else 6, 6)
        single.load_state_dict({name.replace(f"_l{k}", "_l0"): w for name, w in layer.state_dict().items() if f"_l{k}" in name})
        singles.append(single)
    x = torch.randn(9, 4, 5)
    torch.manual_seed(11)
    expected = x
    for k, single in enumerate(singles):
        expected = single(expected)[0]
        if k < 2:
            expected = D.dropout(expected, p)
    torch.manual_seed(11)
    torch.testing.assert_close(layer(x)[0], expected, rtol=0, atol=0)


def test_the_char_lm_drops_before_its_output_layer_with_it():
    model = CharLM(CharLMConfig(vocab_size=20, hidden=16, embedding=8, layers=2, dropout=0.3))
    assert isinstance(model.drop, D.Dropout)
