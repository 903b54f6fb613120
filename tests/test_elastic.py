"""Elastic LoRA rank on PEFT: sub-adapters are exact slices of the super-adapter, and the search-space API."""

import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import make_model

from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig
from shears_nncf.config_file import from_dict, load_config
from shears_nncf.elastic import (
    ElasticLoraA,
    ElasticLoraB,
    SearchSpace,
    add_elastic_lora,
    build_search_space,
    load_elastic_lora,
    save_super_adapter,
)
from shears_nncf.errors import ShearsError

ALPHA, WIDTHS = 16.0, [8, 6, 4]
GROUPS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: extra threads only contend on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _nls(widths=WIDTHS, groups=GROUPS, **lora) -> NLSConfig:
    lora = {"lora_alpha": ALPHA, "lora_dropout": 0.0, **lora}
    return NLSConfig(
        elasticity=ElasticityConfig(groups=groups, ranks=[list(widths)] * len(groups)), lora=LoraSettings(**lora)
    )


def _elastic_model(seed=0, **kw):
    model, _ = make_model("llama", seed=seed)
    peft_model, ctl = add_elastic_lora(model, _nls(**kw))
    torch.manual_seed(seed + 1)
    for _, (a, b) in ctl._pairs.items():  # LoRA B starts at zero; make every rank component matter
        torch.nn.init.normal_(a.weight, std=0.2)
        torch.nn.init.normal_(b.weight, std=0.2)
    return peft_model.eval(), ctl


def test_module_output_equals_hand_built_sliced_lora():
    peft_model, ctl = _elastic_model()
    name = "model.layers.1.self_attn.q_proj"
    layer = peft_model.get_base_model().get_submodule(name)
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    assert isinstance(a, ElasticLoraA) and isinstance(b, ElasticLoraB)
    w = layer.base_layer.weight.detach().clone()
    x = torch.randn(3, 5, w.shape[1])
    group = next(g.name for g in ctl.space.groups if name in g.modules)
    for r in WIDTHS:
        ctl.activate({**ctl.space.maximal(), group: r})
        with torch.no_grad():
            got = layer(x)
            expected = x @ w.T + (x @ a.weight[:r].T @ b.weight[:, :r].T) * (ALPHA / max(WIDTHS))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the widths really differ: rank 4 is not rank 8
    ctl.activate({**ctl.space.maximal(), group: 4})
    with torch.no_grad():
        low = layer(x)
    ctl.activate(ctl.space.maximal())
    with torch.no_grad():
        assert not torch.allclose(low, layer(x), atol=1e-4)


def test_model_logits_equal_plain_peft_lora_with_sliced_weights():
    from peft import LoraConfig, get_peft_model

    peft_model, ctl = _elastic_model()
    config = ctl.space.random(random.Random(5))
    config[ctl.space.groups[0].name] = 6  # at least three distinct ranks in play
    config[ctl.space.groups[1].name] = 4
    ctl.activate(config)
    ids = torch.randint(3, 300, (2, 12))
    with torch.no_grad():
        elastic_logits = peft_model(input_ids=ids).logits

    ranks = ctl.space.module_ranks(config)
    plain_base, _ = make_model("llama", seed=0)
    plain = get_peft_model(
        plain_base,
        LoraConfig(
            r=max(WIDTHS),
            lora_alpha=ALPHA,
            lora_dropout=0.0,
            target_modules=list(ranks),
            rank_pattern={re.escape(m): r for m, r in ranks.items()},
            alpha_pattern={re.escape(m): ALPHA * r / max(WIDTHS) for m, r in ranks.items()},
        ),
    ).eval()
    for m, r in ranks.items():
        src = peft_model.get_base_model().get_submodule(m)
        dst = plain.get_base_model().get_submodule(m)
        assert dst.r["default"] == r and dst.scaling["default"] == pytest.approx(ALPHA / max(WIDTHS))
        with torch.no_grad():
            dst.lora_A["default"].weight.copy_(src.lora_A["default"].weight[:r])
            dst.lora_B["default"].weight.copy_(src.lora_B["default"].weight[:, :r])
    with torch.no_grad():
        plain_logits = plain(input_ids=ids).logits
    torch.testing.assert_close(elastic_logits, plain_logits, rtol=1e-4, atol=1e-5)


def test_only_the_active_slice_receives_gradient():
    peft_model, ctl = _elastic_model()
    peft_model.train()
    config = {g.name: (6 if i % 2 else 4) for i, g in enumerate(ctl.space.groups)}
    ctl.activate(config)
    ids = torch.randint(3, 300, (2, 10))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    ranks = ctl.space.module_ranks(config)
    for name, (a, b) in ctl._pairs.items():
        r = ranks[name]
        assert a.weight.grad[:r].abs().sum() > 0 and b.weight.grad[:, :r].abs().sum() > 0
        assert torch.count_nonzero(a.weight.grad[r:]) == 0 and torch.count_nonzero(b.weight.grad[:, r:]) == 0
    frozen = [n for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert frozen and all(not peft_model.get_parameter(n).requires_grad for n in frozen)


def test_search_space_configurations_and_costs():
    peft_model, ctl = _elastic_model()
    space = ctl.space
    assert len(space.groups) == 6 and space.size() == 3**6 and space.max_rank == 8
    assert set(space.maximal().values()) == {8} and set(space.minimal().values()) == {4}
    assert set(space.heuristic().values()) == {6}
    draws = [space.random(random.Random(i)) for i in range(40)]
    assert all(space.validate(d) == d for d in draws)
    assert {w for d in draws for w in d.values()} == set(WIDTHS)
    assert space.random(random.Random(7)) == space.random(random.Random(7))
    for config in (space.maximal(), space.minimal(), draws[0]):
        ctl.activate(config)
        ranks = space.module_ranks(config)
        by_hand = sum(
            a.weight[: ranks[n]].numel() + b.weight[:, : ranks[n]].numel() for n, (a, b) in ctl._pairs.items()
        )
        assert space.adapter_params(config) == ctl.active_params() == space.macs_per_token(config) == by_hand
    assert space.adapter_params(space.maximal()) == sum(
        p.numel() for n, p in peft_model.named_parameters() if "lora_" in n
    )
    with pytest.raises(ShearsError, match="not in its list"):
        space.validate({**space.maximal(), space.groups[0].name: 5})
    with pytest.raises(ShearsError, match="unknown group"):
        space.validate({**space.maximal(), "model.layers.9.q_proj": 8})
    with pytest.raises(ShearsError, match="no rank for group"):
        space.validate({space.groups[0].name: 8})
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_original_shears_configs_give_three_groups_per_llama_block():
    ref = Path(__file__).resolve().parents[1] / "configs" / "original"  # the release's files, byte for byte
    model, _ = make_model("llama")
    cfg = load_config(ref / "nncf_shears_llama.json")
    space = build_search_space(model, cfg.nls)
    assert len(space.groups) == 3 * model.config.num_hidden_layers
    assert all(g.ranks == [32, 24, 16] for g in space.groups) and space.max_rank == 32
    short = [[m.rsplit(".", 1)[-1] for m in g.modules] for g in space.groups[:3]]
    assert short == [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]
    assert [g.modules[0].split(".")[2] for g in space.groups] == ["0", "0", "0", "1", "1", "1"]

    gate = load_config(ref / "nncf_shears_llama_with_gate_proj.json")
    space = build_search_space(model, gate.nls)
    assert sorted(m.rsplit(".", 1)[-1] for m in space.groups[1].modules) == ["gate_proj", "up_proj"]
    peft_model, ctl = add_elastic_lora(model, gate.nls)
    assert peft_model.get_base_model().model.layers[0].mlp.gate_proj.lora_A["default"].out_features == 32

    mpt = load_config(ref / "nncf_shears_mpt.json")
    with pytest.raises(ShearsError, match="matches no module of LlamaForCausalLM"):
        build_search_space(make_model("llama")[0], mpt.nls)


def test_regex_groups_match_full_names_and_fixed_targets():
    model, _ = make_model("llama")
    nls = _nls(groups=[[r"model\.layers\.0\.self_attn\.[qk]_proj"], ["down_proj"]], target_modules=["q_proj", "o_proj"])
    space = build_search_space(model, nls)
    assert [g.modules for g in space.groups[:1]] == [
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    ]
    assert len(space.groups) == 3  # the q/k group exists in block 0 only, down_proj in both blocks
    assert sorted(space.fixed_modules) == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.self_attn.q_proj",
    ]


def test_super_adapter_rank_can_exceed_the_widths():
    model, _ = make_model("llama")
    peft_model, ctl = add_elastic_lora(model, _nls(widths=[6, 4], r=8))
    assert ctl.space.max_rank == 8 and set(ctl.space.maximal().values()) == {6}
    layer = peft_model.get_base_model().model.layers[0].mlp.up_proj
    assert layer.lora_A["default"].out_features == 8 and layer.scaling["default"] == ALPHA / 8
    with pytest.raises(ShearsError, match="rank 8 exceeds the LoRA rank r=4"):
        _nls(widths=[8, 4], r=4)


@pytest.mark.parametrize(
    "widths, match",
    [
        ([8, 0], "positive integers"),
        ([8, -2], "positive integers"),
        ([8, 4.5], "positive integers"),
        ([8, 8], "repeat"),
    ],
)
def test_bad_widths(widths, match):
    with pytest.raises(ShearsError, match=match):
        ElasticityConfig(groups=[["q_proj"]], ranks=[widths])


def test_config_formats_and_unknown_dimension():
    raw = {
        "bootstrapNAS": {
            "training": {
                "elasticity": {
                    "available_elasticity_dims": ["lora_rank"],
                    "lora_rank": {"groups": GROUPS, "widths": [16, 8]},
                }
            }
        }
    }
    nls = from_dict(raw).nls
    assert nls.elasticity.ranks == [[16, 8]] * 3 and nls.max_rank == 16
    raw["bootstrapNAS"]["training"]["elasticity"]["available_elasticity_dims"] = ["depth"]
    with pytest.raises(ShearsError, match="must be one of 'lora_rank', 'width', got 'depth'"):
        from_dict(raw)


def test_saved_super_adapter_loads_with_stock_peft_and_back_as_elastic(tmp_path):
    from peft import PeftConfig, PeftModel

    peft_model, ctl = _elastic_model()
    config = {g.name: w for g, w in zip(ctl.space.groups, [8, 6, 4, 4, 6, 8])}
    ctl.activate(config)
    ids = torch.randint(3, 300, (1, 9))
    with torch.no_grad():
        before = peft_model(input_ids=ids).logits
    save_super_adapter(peft_model, ctl.space, tmp_path / "super")
    assert PeftConfig.from_pretrained(str(tmp_path / "super")).r == 8
    stock = PeftModel.from_pretrained(make_model("llama")[0], str(tmp_path / "super")).eval()
    a = stock.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"]
    assert type(a) is torch.nn.Linear and a.out_features == 8  # a plain PEFT adapter: rank 8, nothing elastic
    loaded, ctl2 = load_elastic_lora(make_model("llama")[0], tmp_path / "super")
    assert ctl2.space == ctl.space and ctl2.active_config == ctl.space.maximal()
    ctl2.activate(config)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, before)
    with pytest.raises(ShearsError, match="has no elastic_config.json"):
        load_elastic_lora(make_model("llama")[0], tmp_path)


def test_elastic_forward_matches_functional_definition_on_gpt_neox():
    """Another architecture's fused projection: the same slicing rule, checked with F.linear."""
    model, _ = make_model("gpt_neox")
    nls = _nls(groups=[["query_key_value"], ["dense_4h_to_h"]])
    peft_model, ctl = add_elastic_lora(model, nls)
    layer = peft_model.get_base_model().gpt_neox.layers[0].attention.query_key_value
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    ctl.activate({g.name: 4 for g in ctl.space.groups})
    x = torch.randn(2, 64)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + F.linear(F.linear(x, a[:4]), b[:, :4]) * (ALPHA / 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


def test_merge_and_unload_merges_the_active_sub_adapter_not_the_maximal_one():
    """PEFT's merge reads the full A / B weights; on a live elastic model it must merge what the model computes."""
    ids = torch.randint(0, 100, (2, 9))
    rng = random.Random(3)
    results = {}
    for which in ("mixed", "maximal"):
        peft_model, ctl = _elastic_model(seed=5)
        config = ctl.space.random(rng) if which == "mixed" else ctl.space.maximal()
        while which == "mixed" and config == ctl.space.maximal():
            config = ctl.space.random(rng)
        ctl.activate(config)
        with torch.no_grad():
            unmerged = peft_model(ids).logits
            peft_model.merge_adapter()
            with pytest.raises(ShearsError, match="unmerge_adapter"):
                ctl.activate(ctl.space.minimal())  # unmerging would subtract another sub-adapter
            merged = peft_model.merge_and_unload()(ids).logits
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        results[which] = merged
    assert (results["mixed"] - results["maximal"]).abs().max() > 1e-3  # PEFT's plain merge would give the maximal one
