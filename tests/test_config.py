"""The NNCF-style config boundary: the original Shears configs load, bad configs give one readable line."""

import json
from pathlib import Path

import pytest

from shears_nncf.cli import main
from shears_nncf.config_file import from_dict, load_config
from shears_nncf.errors import ShearsError

ORIGINAL_DIR = Path(__file__).resolve().parents[1] / "configs" / "original"
ORIGINALS = ["nncf_shears_llama.json", "nncf_shears_llama_with_gate_proj.json", "nncf_shears_mpt.json"]


@pytest.mark.parametrize("name", ORIGINALS)
def test_original_shears_configs_load_unchanged(name):
    path = ORIGINAL_DIR / name  # byte-identical to the release's files (../shared/reference/shears_nncf_configs)
    raw = json.loads(path.read_text())
    cfg = load_config(path)
    width = raw["bootstrapNAS"]["training"]["elasticity"]["width"]
    assert cfg.nls.elasticity.groups == width["overwrite_groups"]
    assert cfg.nls.elasticity.ranks == width["overwrite_groups_widths"]
    assert cfg.nls.lora.lora_alpha == 64 and cfg.nls.lora.lora_dropout == 0.1  # the paper's defaults
    assert cfg.compression is None


def test_package_format_round_trip():
    cfg = from_dict(
        {
            "compression": [{"algorithm": "wanda", "sparsity_level": 0.5, "pattern": "2:4", "nsamples": 8}],
            "bootstrapNAS": {
                "training": {
                    "algorithm": "nls",
                    "sampling": "sandwich",
                    "elasticity": {
                        "available_elasticity_dims": ["lora_rank"],
                        "lora_rank": {"groups": [["q_proj", "k_proj"], ["down_proj"]], "widths": [16, 32, 24]},
                    },
                },
                "search": {"strategy": "hill-climbing", "budget": 7},
            },
            "training": {"data": "a.json", "learning_rate": 1e-4},
        }
    )
    assert (cfg.compression.sparsity_level, cfg.compression.pattern, cfg.compression.nsamples) == (0.5, "2:4", 8)
    assert cfg.compression.method == "wanda"
    assert cfg.nls.elasticity.ranks == [[32, 24, 16], [32, 24, 16]]  # one list for all groups, sorted largest first
    assert cfg.nls.elasticity.max_rank == 32 and cfg.nls.sampling == "sandwich"
    assert (cfg.search.strategy, cfg.search.budget) == ("hill-climbing", 7)
    assert cfg.training.data == ["a.json"] and cfg.training.learning_rate == 1e-4
    assert cfg.export.ignored_scopes is None and cfg.export.advanced.smooth_quant_alpha == 0.95
    assert (
        from_dict({"export": {"advanced": {"float_input_weights": "int4"}}}).export.advanced.float_input_weights
        == "int4"
    )
    assert from_dict({"export": {"ignored_scopes": []}}).export.ignored_scopes == []


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"compression": {"algorithm": "wanda", "sparsity_level": 1.5}}, ["sparsity_level", "1.5"]),
        ({"compression": {"algorithm": "wanda", "pattern": "3:4"}}, ["pattern", "'2:4'"]),
        ({"compression": {"algorithm": "wanda", "sparsity": 0.5}}, ["unknown key 'sparsity'", "sparsity_level"]),
        ({"modle": "x"}, ["unknown key 'modle'", "model"]),
        (
            {"bootstrapNAS": {"training": {"elasticity": {"available_elasticity_dims": ["depth"]}}}},
            ["'depth'", "lora_rank"],
        ),
        (
            {"bootstrapNAS": {"training": {"elasticity": {"lora_rank": {"groups": [["q_proj"]], "widths": [8, -4]}}}}},
            ["widths", "-4"],
        ),
        (
            {
                "bootstrapNAS": {
                    "training": {"elasticity": {"lora_rank": {"groups": [["q"], ["k"]], "widths": [[8], [8], [4]]}}}
                }
            },
            ["2 groups", "3 width lists"],
        ),
        ({"bootstrapNAS": {"training": {"elasticity": {"lora_rank": {"groups": [["q"]], "widths": [2.5]}}}}}, ["2.5"]),
        ({"export": {"sparse_rate": 2}}, ["sparse_rate", "2"]),
        ({"export": {"advanced": {"float_input_weights": "int2"}}}, ["export.advanced.float_input_weights", "'int4'"]),
        ({"export": {"ignored_scopes": "down_proj"}}, ["ignored_scopes"]),
        ({"bootstrapNAS": {"search": {"strategy": "random-walk"}}}, ["strategy", "hill-climbing"]),
    ],
)
def test_bad_configs_name_the_key(raw, words):
    with pytest.raises(ShearsError) as e:
        from_dict(raw)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"compression": {"algorithm": "wanda", "sparsity_level": 0.5,}}')
    out = tmp_path / "out"
    assert main(["prune", "--model", "x", "--output", str(out), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid JSON" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["prune", "--model", "x", "--output", str(out), "--config", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    paths = sorted((root / "configs").rglob("*.json")) + sorted((root / "shears_nncf" / "configs").glob("*.json"))
    assert len(paths) >= 10
    for p in paths:
        cfg = load_config(p)
        assert cfg.nls is not None and cfg.nls.elasticity.max_rank == 32, p


def _all_configs():
    root = Path(__file__).resolve().parents[1]
    return sorted((root / "configs").rglob("*.json")) + sorted((root / "shears_nncf" / "configs").glob("*.json"))


def test_every_shipped_config_round_trips_through_its_json(tmp_path):
    """to_dict writes every setting; the file validates against the schema and reads back to an equal config."""
    from shears_nncf.config_file import save_config, to_dict, validate

    for path in _all_configs():
        cfg = load_config(path)
        validate(to_dict(cfg))
        save_config(cfg, tmp_path / "saved.json")
        again = load_config(tmp_path / "saved.json")
        assert again == cfg, path
        assert (
            json.loads((tmp_path / "saved.json").read_text())["training"]["learning_rate"] == cfg.training.learning_rate
        )


def test_a_bad_value_is_refused_in_the_same_words_from_file_flag_and_python(tmp_path, capsys):
    """One declaration, three doors: the rule and its wording come from the field, whoever sets it."""
    from shears_nncf.config import BenchConfig, PruningConfig

    rule = "must be a number in [0, 1), got 1.5"
    with pytest.raises(ShearsError) as e:
        from_dict({"compression": {"algorithm": "wanda", "sparsity_level": 1.5}})
    assert f"compression.sparsity_level {rule}" in str(e.value)
    with pytest.raises(ShearsError) as e:
        PruningConfig(sparsity_level=1.5)
    assert f"sparsity_level (--sparsity) {rule}" in str(e.value)
    assert main(["prune", "--model", "x", "--output", str(tmp_path / "o"), "--sparsity", "1.5"]) == 2
    assert rule in capsys.readouterr().err
    # the same for a nullable integer, where bool must not pass as 1
    for bad in (0, True, 2.5):
        with pytest.raises(ShearsError, match="--threads must be a positive integer"):
            BenchConfig(threads=bad)
    with pytest.raises(ShearsError, match=r"bench.threads must be a positive integer, got 0"):
        from_dict({"bench": {"threads": 0}})


def test_command_line_options_are_the_declared_fields():
    """Each stage's flags, their help and their defaults come from the config declarations, none typed twice."""
    import dataclasses

    from shears_nncf import cli
    from shears_nncf.config import BenchConfig, ExportConfig, PruningConfig, SearchConfig, TrainingConfig
    from shears_nncf.options import flag_of

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command, cls, names in (
        ("prune", PruningConfig, cli.PRUNE_OPTIONS),
        ("train", TrainingConfig, cli.TRAIN_OPTIONS),
        ("search", SearchConfig, cli.SEARCH_OPTIONS),
        ("export", ExportConfig, cli.EXPORT_OPTIONS),
        ("bench", BenchConfig, cli.BENCH_OPTIONS),
    ):
        actions = {a.dest: a for a in sub[command]._actions}
        for f in dataclasses.fields(cls):
            if f.name in names:
                action = actions[f.name]
                assert flag_of(f) in action.option_strings and action.help.startswith(
                    f.metadata["help"].replace("%", "%%")
                )
    args = parser.parse_args(["prune", "--model", "m", "--output", "o", "--sparsity", "0.6"])
    assert args.sparsity_level == 0.6 and args.nsamples is None  # None: not given, the config's value stays
    args = parser.parse_args(
        ["export", "--model", "m", "--output", "o", "--ignored-scopes", "a,b", "--sparse-rate", "0.4"]
    )
    assert args.ignored_scopes == ["a", "b"] and args.sparse_rate == 0.4
