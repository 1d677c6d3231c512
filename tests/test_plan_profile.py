"""The plan's profile of a model (core/plan.py: ``profiled_forward``). Its FLOP count covers every matmul
a model runs: the convolutions and linear layers of a CNN as before, and in a language model also
``transformers``' ``Conv1D`` (GPT-2) and attention's products, which hooks on Conv/Linear modules did
not see; its working set leaves out the model's output (a language model's logits)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.losses import causal_lm
from distributed_surface.core.plan import profiled_forward
from distributed_surface.example import digits_data, trained_digits_cnn

VOCAB, T = 320, 64


def profile_of(model: nn.Module, inputs, samples: int) -> dict:
    with torch.no_grad():
        call = (lambda: model(**inputs)) if isinstance(inputs, dict) else (lambda: model(inputs))
        return profiled_forward(model.eval(), call, samples)[1]


def conv_and_linear_flops(model: nn.Module, x: torch.Tensor) -> float:
    """2 × the multiply-adds of every Conv2d and Linear layer, from their output shapes (by hand)."""
    total = 0.0

    def hook(module, args, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += 2.0 * out.numel() * module.in_channels // module.groups * np.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += 2.0 * out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total


def test_the_example_cnn_counts_its_convolutions_and_linear_layers():
    model = trained_digits_cnn().eval()
    x = digits_data()[0][:2]
    profile = profile_of(model, x, 2)
    assert profile["flops_per_sample"] == pytest.approx(conv_and_linear_flops(model, x) / 2, rel=1e-9)
    assert profile["flops_per_sample"] == pytest.approx(618_496)  # the count the plan used before
    assert profile["module_calls"] == 9


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=T,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config), config.n_embd, config.n_layer


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T)  # fmt: skip
    return transformers.LlamaForCausalLM(config), config.hidden_size, config.num_hidden_layers


def expected_flops_per_sample(model: nn.Module, width: int, layers: int) -> float:
    """2 × T × (every parameter outside the embedding tables, the LM head's included: GPT-2 ties it to
    the token embedding) + 2·2·T²·d per layer (attention's Q·Kᵀ and its product with V). Biases and
    norms are counted as parameters though they run no matmul: the formula is ~2% high here."""
    tables = {name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    weights = sum(p.numel() for name, p in model.named_parameters(remove_duplicate=False)
                  if name.rpartition(".")[0] not in tables)  # fmt: skip
    return 2 * T * weights + layers * 2 * 2 * T * T * width


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_a_language_model_counts_every_matmul_and_attention(build):
    model, width, layers = build()
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    profile = profile_of(model, {"input_ids": ids}, 2)
    assert profile["flops_per_sample"] == pytest.approx(expected_flops_per_sample(model, width, layers), rel=0.03)


def test_the_plan_line_shows_the_counted_flops():
    model, width, layers = tiny_gpt2()
    ids = torch.randint(0, VOCAB, (12, T), generator=torch.Generator().manual_seed(2))
    directions = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(model, directions, ({"input_ids": ids}, ids), causal_lm, 6)
    flops = float(ev.plan.reason.split(" FLOPs over")[0].rpartition(" ")[2])
    assert flops == pytest.approx(6 * expected_flops_per_sample(model, width, layers), rel=0.03)


class RefusesDispatchModes(nn.Module):
    """A model that fails under any TorchDispatchMode (the counter's), and runs without one."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if torch._C._len_torch_dispatch_stack() > 0:
            raise RuntimeError("not under a dispatch mode")
        return self.fc(x)


def test_a_model_the_counter_cannot_run_gets_one_point_per_pass():
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    model = RefusesDispatchModes()
    directions = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = SurfaceEvaluator(model, directions, (x, y), batch_size=5)
        assert ev.plan.path == "plain" and "could not be counted" in ev.plan.reason
    assert np.isfinite(ev.evaluate(np.array([[0.0], [0.5]]))["train_loss"]).all()


def test_flops_are_counted_only_where_the_plan_decides_from_them():
    x, y = digits_data()
    model = trained_digits_cnn()
    directions = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", 0)
    for settings, counted in (({}, True), ({"vmap": "off"}, False), ({"points_per_pass": 4}, False)):
        ev = SurfaceEvaluator(trained_digits_cnn(), directions, (x[:32], y[:32]), **settings)
        assert (ev._profile["flops_per_sample"] is not None) == counted, settings


def test_the_working_set_leaves_out_the_models_output():
    """A language model's logits go straight to the loss: the CPU batch is sized by the largest activation
    inside the model (GPT-2's MLP, T × 4d floats per sample), not by them (T × V)."""
    model, width, _ = tiny_gpt2()
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, profile = profiled_forward(model.eval(), lambda: model(input_ids=ids).logits, 2)
    assert profile["largest_bytes"] == T * 4 * width * 4 < T * VOCAB * 4
    assert profile["total_bytes"] >= T * VOCAB * 4  # the memory bound still counts them
