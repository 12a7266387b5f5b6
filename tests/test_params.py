"""Named parameter groups: pattern semantics, partition validation, freezing, optimizer groups."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from alttrain.engine.params import (
    GroupSpec,
    apply_frozen,
    compile_pattern,
    match_names,
    resolve_groups,
    summary_table,
    torch_param_groups,
)
from alttrain.errors import ConfigError, ParamGroupError

N_BLOCKS = 12  # so that blocks.1 and blocks.10 / blocks.11 both exist


def make_net() -> nn.ModuleDict:
    """stem.{weight,bias}, blocks.0..11.{weight,bias}, head.0.* and head.2.* (nested biases)."""
    torch.manual_seed(0)
    return nn.ModuleDict({
        "stem": nn.Linear(2, 3),
        "blocks": nn.Sequential(*[nn.Linear(3, 3) for _ in range(N_BLOCKS)]),
        "head": nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)),
    })


def run_net(net: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    return net["head"](net["blocks"](net["stem"](x)))


@pytest.fixture
def net() -> nn.ModuleDict:
    return make_net()


@pytest.fixture
def names(net) -> list[str]:
    return [n for n, _ in net.named_parameters()]


def raises(specs, module, match_all: list[str], owner: str = "model") -> str:
    """Resolve, expect a ParamGroupError on one line containing every string of match_all."""
    with pytest.raises(ParamGroupError) as info:
        resolve_groups(module, specs, owner=owner)
    message = str(info.value)
    assert "\n" not in message
    for text in match_all:
        assert text in message, (text, message)
    return message


# ---------------------------------------------------------------- pattern semantics

def test_block_glob_never_reaches_a_longer_index(names):
    assert match_names(["blocks.1.*"], names) == ["blocks.1.weight", "blocks.1.bias"]
    assert compile_pattern("blocks.1.*").fullmatch("blocks.10.weight") is None
    assert match_names(["blocks.1*"], names) == [  # without the dot, 1* does reach 10 and 11
        "blocks.1.weight", "blocks.1.bias", "blocks.10.weight", "blocks.10.bias",
        "blocks.11.weight", "blocks.11.bias"]


def test_star_crosses_dots_so_star_bias_finds_nested_biases(names):
    assert match_names(["*.bias"], names) == (
        ["stem.bias"] + [f"blocks.{i}.bias" for i in range(N_BLOCKS)] + ["head.0.bias", "head.2.bias"])


def test_globs_are_anchored_at_both_ends_and_dots_are_literal():
    candidates = ["stem.weight", "blocks.1.weight", "blocksX1Xweight", "blocks.1.weight_g"]
    assert match_names(["weight"], candidates) == []
    assert match_names(["1.*"], candidates) == []
    assert match_names(["blocks.1.weight"], candidates) == ["blocks.1.weight"]
    assert match_names(["blocks.[0-2].weight"], candidates) == ["blocks.1.weight"]


def test_match_names_keeps_the_order_of_names_not_of_patterns(names):
    assert match_names(["head.2.*", "stem.weight"], names) == ["stem.weight", "head.2.weight", "head.2.bias"]


def test_regex_patterns_must_match_the_full_name(names):
    assert match_names([r"re:blocks\.(1|10)\.weight"], names) == ["blocks.1.weight", "blocks.10.weight"]
    assert match_names([r"re:blocks\.1"], names) == []  # would be a hit with re.search
    assert match_names([r"re:.*\.2\..*"], names) == ["blocks.2.weight", "blocks.2.bias",
                                                     "head.2.weight", "head.2.bias"]


@pytest.mark.parametrize("pattern, text", [
    ("re:blocks.(", "bad regular expression in pattern 're:blocks.('"),
    ("", "must be a non-empty string"),
    (None, "must be a non-empty string, got None"),
])
def test_bad_patterns_raise_param_group_error(pattern, text):
    with pytest.raises(ParamGroupError) as info:
        compile_pattern(pattern)
    assert text in str(info.value)
    assert isinstance(info.value, ConfigError)  # the CLI catches the whole AltTrainError family


def test_bad_regex_inside_a_group_is_reported_by_resolve(net):
    raises([{"name": "g", "params": ["re:(("]}], net, ["bad regular expression", "'re:(('"])


# ---------------------------------------------------------------- partition

def test_valid_partition_owns_each_parameter_once_in_module_order(net, names):
    groups = resolve_groups(net, [
        {"name": "one", "params": ["blocks.1.*"]},
        {"name": "rest", "params": ["stem.*", r"re:blocks\.(?!1\.)\d+\..*", "head.*"]},
    ])
    assert [g.name for g in groups] == ["one", "rest"]
    assert groups[0].names == ["blocks.1.weight", "blocks.1.bias"]
    assert groups[1].names == [n for n in names if not n.startswith("blocks.1.")]
    assert "blocks.10.weight" in groups[1].names
    by_name = dict(net.named_parameters())
    for g in groups:
        assert all(p is by_name[n] for n, p in zip(g.names, g.params, strict=True))
    assert groups[0].numel == 3 * 3 + 3
    assert groups[0].numel + groups[1].numel == sum(p.numel() for p in net.parameters())
    assert all(not g.frozen and g.options == {} for g in groups)


def test_resolving_changes_no_requires_grad_flag(net):
    resolve_groups(net, [{"name": "body", "params": ["*"], "frozen": True}])
    assert all(p.requires_grad for p in net.parameters())


def test_specs_may_be_group_specs_or_hydra_configs(net, names):
    cfg = OmegaConf.create([{"name": "head", "params": ["head.*"], "lr": 0.1},
                            {"name": "body", "params": "re:(stem|blocks)\\..*"}])
    groups = resolve_groups(net, list(cfg))
    assert groups[0].options == {"lr": 0.1} and groups[1].names == names[:-4]
    spec = GroupSpec(name="all", params=("*",))
    assert resolve_groups(net, [spec])[0].names == names


def test_pattern_matching_nothing_names_pattern_group_and_examples(net):
    raises([{"name": "all", "params": ["*"]}, {"name": "late", "params": ["blocks.12.*"]}], net,
           ["D: pattern 'blocks.12.*' of param group 'late' matches no trainable parameter",
            "names look like: stem.weight, stem.bias, blocks.0.weight"], owner="D")


def test_overlap_names_the_parameter_and_both_groups(net):
    raises([{"name": "all", "params": ["*"]}, {"name": "first", "params": ["blocks.1.*"]}], net,
           ["parameter 'blocks.1.weight' is matched by two param groups, 'all' and 'first'", "overlap"])


def test_uncovered_parameters_are_listed(net):
    message = raises([{"name": "blocks", "params": ["blocks.*"]}], net,
                     ["not covered", "stem.weight, stem.bias, head.0.weight, head.0.bias, head.2.weight, "
                      "head.2.bias;", "frozen: true"])
    assert "in all" not in message


def test_many_uncovered_parameters_are_counted(net):
    message = raises([{"name": "stem", "params": ["stem.*"]}], net,
                     ["(not covered): blocks.0.weight, blocks.0.bias,", "blocks.4.bias, ... "
                      f"({2 * N_BLOCKS + 4} in all)"])
    assert "blocks.5.weight" not in message  # only the first ten are shown


@pytest.mark.parametrize("specs, texts", [
    ([{"name": "g", "params": ["stem.*"]}, {"name": "g", "params": ["head.*", "blocks.*"]}],
     ["two param groups are named 'g'"]),
    ([{"params": ["*"]}], ["param group #0 needs a 'name'"]),
    ([{"name": "all", "params": ["*"]}, {"name": "", "params": ["x"]}], ["param group #1 needs a 'name'"]),
    ([{"name": "g"}], ["param group 'g' needs 'params'", "['*.weight']"]),
    ([{"name": "g", "params": []}], ["param group 'g' needs 'params'"]),
    ([{"name": "g", "params": 5}], ["param group 'g' needs 'params'"]),
    ([{"name": "g", "params": {"stem.*": 1}}], ["param group 'g' needs 'params'"]),
    ([{"name": "g", "params": ["*", 3]}], ["param group 'g' needs 'params'"]),
    ([{"name": "g", "params": ["*"], "frozen": "yes"}], ["param group 'g': 'frozen' must be true or false"]),
    (["all"], ["param group #0 must be a mapping"]),
    ([], ["no param groups declared"]),
])
def test_malformed_specs_raise_param_group_error(net, specs, texts):
    raises(specs, net, texts)


# ---------------------------------------------------------------- freezing

def test_user_frozen_parameters_are_never_selected(net, names):
    net["stem"].requires_grad_(False)
    groups = resolve_groups(net, [{"name": "all", "params": ["*"]}])
    assert groups[0].names == names[2:]  # no coverage complaint about stem either


def test_pattern_matching_only_user_frozen_parameters_says_so(net):
    net["stem"].requires_grad_(False)
    raises([{"name": "stem", "params": ["stem.*"]}, {"name": "rest", "params": ["blocks.*", "head.*"]}], net,
           ["pattern 'stem.*' of param group 'stem' matches no trainable parameter",
            "matches only parameters already frozen with requires_grad=False: stem.weight, stem.bias"])


def test_pattern_matching_nothing_at_all_has_no_frozen_hint(net):
    net["stem"].requires_grad_(False)
    message = raises([{"name": "all", "params": ["*", "tail.*"]}], net, ["pattern 'tail.*'"])
    assert "already frozen" not in message


def frozen_body_groups(net):
    return resolve_groups(net, [
        {"name": "body", "params": ["stem.*", "blocks.*"], "frozen": True, "lr": 5.0},
        {"name": "head", "params": ["head.*"], "lr": 0.1, "weight_decay": 0.01, "betas": (0.5, 0.9)},
    ])


def test_apply_frozen_switches_off_frozen_groups_only(net):
    net["head"][2].bias.requires_grad_(False)  # frozen by the user beforehand: stays frozen
    groups = frozen_body_groups(net)
    apply_frozen(groups)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    assert flags == {n: n.startswith("head.") and n != "head.2.bias" for n in flags}
    assert groups[1].names == ["head.0.weight", "head.0.bias", "head.2.weight"]


def test_torch_param_groups_leave_frozen_groups_out_and_pass_options(net):
    groups = frozen_body_groups(net)
    pgs = torch_param_groups(groups)
    assert len(pgs) == 1
    assert pgs[0]["params"] == groups[1].params
    assert {k: v for k, v in pgs[0].items() if k != "params"} == {
        "name": "head", "lr": 0.1, "weight_decay": 0.01, "betas": (0.5, 0.9)}


def test_adam_gets_named_groups_and_moves_only_trainable_ones(net):
    groups = resolve_groups(net, [
        {"name": "stem", "params": ["stem.*"], "frozen": True},
        {"name": "blocks", "params": ["blocks.*"]},
        {"name": "head", "params": ["head.*"], "lr": 0.1, "weight_decay": 0.01, "betas": (0.5, 0.9)},
    ])
    apply_frozen(groups)
    opt = torch.optim.Adam(torch_param_groups(groups), lr=1e-3)
    assert [(pg["name"], pg["lr"], pg["weight_decay"], pg["betas"]) for pg in opt.param_groups] == [
        ("blocks", 1e-3, 0, (0.9, 0.999)), ("head", 0.1, 0.01, (0.5, 0.9))]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    run_net(net, torch.ones(4, 2)).square().sum().backward()
    opt.step()
    for n, p in net.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (not n.startswith("stem.")), n
        assert (p.grad is None) == n.startswith("stem."), n


# ---------------------------------------------------------------- summary table

def table_groups() -> list:
    net = nn.ModuleDict({"body": nn.Linear(40, 30), "head": nn.Linear(30, 1), "aux": nn.Linear(1, 1)})
    return resolve_groups(net, [{"name": "body", "params": ["body.*"], "lr": 0.01},
                                {"name": "head", "params": ["head.*"], "frozen": True},
                                {"name": "aux", "params": ["aux.*"]}])


def test_summary_table_with_optimizer_shows_current_lr():
    groups = table_groups()
    opt = torch.optim.SGD(torch_param_groups(groups), lr=0.1)
    opt.param_groups[0]["lr"] = 0.005  # as a scheduler would: the table reads the optimizer
    assert summary_table(groups, opt, title="param groups of G") == (
        "param groups of G\n"
        "group  tensors  params     lr  frozen\n"
        "-----  -------  ------  -----  ------\n"
        "body         2   1,230  0.005      no\n"
        "head         2      31      -     yes\n"
        "aux          2       2    0.1      no")


def test_summary_table_without_optimizer_uses_group_options():
    assert summary_table(table_groups()) == (
        "group  tensors  params    lr  frozen\n"
        "-----  -------  ------  ----  ------\n"
        "body         2   1,230  0.01      no\n"
        "head         2      31     -     yes\n"
        "aux          2       2     -      no")


# ---------------------------------------------------------------- the optimizer's step on a CPU

SAME_FOREACH_CASES = [
    (torch.optim.Adam, {}), (torch.optim.Adam, {"weight_decay": 0.1, "amsgrad": True}),
    (torch.optim.Adam, {"maximize": True, "betas": (0.0, 0.9)}),
    (torch.optim.AdamW, {"weight_decay": 0.05}), (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    (torch.optim.RMSprop, {"centered": True, "momentum": 0.9}), (torch.optim.Adagrad, {}),
    (torch.optim.Adamax, {}), (torch.optim.Adadelta, {}), (torch.optim.Rprop, {}),
]


def stepped(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> tuple[list, dict]:
    """Parameters and optimizer state after ``steps`` steps on the same random gradients every time."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt.state_dict()["state"]


@pytest.mark.parametrize(("cls", "options"), SAME_FOREACH_CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_cpu_groups_get_the_foreach_step_which_changes_no_number(cls, options):
    import functools

    from alttrain.engine.network import build_network

    ours = build_network("model", make_net(), [{"name": "all", "params": ["*"]}], functools.partial(cls, **options))
    assert ours.optimizer.param_groups[0]["foreach"] is True
    theirs_net = make_net()
    theirs = cls(theirs_net.parameters(), **options)
    assert theirs.param_groups[0]["foreach"] is None  # torch's own default: the per-tensor loop on a CPU
    (ours_params, ours_state), (their_params, their_state) = stepped(ours.module, ours.optimizer), \
        stepped(theirs_net, theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, their_params))
    for key, values in ours_state.items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(their_state[key][name])), (key, name)


def test_a_group_that_chooses_its_step_and_optimizers_that_round_differently_keep_torchs_choice():
    import functools

    from alttrain.engine.network import build_network

    def group_options(cls, **options) -> dict:
        net = build_network("model", make_net(), [{"name": "body", "params": ["stem.*", "blocks.*"], "foreach": False},
                                                  {"name": "head", "params": ["head.*"]}],
                            functools.partial(cls, **options))
        return {g["name"]: (g.get("foreach"), g.get("fused")) for g in net.optimizer.param_groups}

    assert group_options(torch.optim.Adam) == {"body": (False, None), "head": (True, None)}
    assert group_options(torch.optim.Adam, fused=True) == {"body": (False, True), "head": (None, True)}
    # NAdam's foreach code rounds differently from its loop: torch's default stays.
    assert group_options(torch.optim.NAdam) == {"body": (False, None), "head": (None, None)}
