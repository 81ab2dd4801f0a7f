"""Tests of search space declaration: TOML loading, validation, constraints, conditional genes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxopt.core.errors import InvalidInputError
from onnxopt.nas.space import ChoiceGene, IntGene, SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


def test_example_space_loads() -> None:
    space = load_space(ROOT / "examples" / "search_space.toml")
    assert space.names[0] == "depth"
    assert space.settings["train"]["epochs"] > 0
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = space.sample_valid(rng)
        assert g is not None and space.is_valid(g)
        canon = space.canonical(g)
        if g["depth"] < 3:
            assert canon["width_3"] is None
        if g["depth"] >= 2:
            assert g["width_2"] >= g["width_1"]


def test_example_space_genes_known_to_torch_builder() -> None:
    from onnxopt.frameworks.torch_genome import check_genes

    check_genes(load_space(ROOT / "examples" / "search_space.toml").names)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no genes"),
        ("[genes]\n", "no genes"),
        ("[genes.a]\ntype = 'int'\nlow = 5\nhigh = 1\n", "low \\(5\\) > high \\(1\\)"),
        ("[genes.a]\ntype = 'choice'\noptions = []\n", "options is empty"),
        ("[genes.a]\ntype = 'int'\nlow = 0\nhigh = 5\nstep = 2\n", "not a multiple of step"),
        ("[genes.a]\ntype = 'blob'\n", "type must be int, choice or float"),
        ("[genes.a]\ntype = 'int'\nlow = 0\n", "missing key 'high'"),
        ("[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\nstpe = 1\n", "unknown key\\(s\\) stpe"),
        ("constraints = ['b > 1']\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "unknown gene\\(s\\) b"),
        ("constraints = ['a > 5']\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "contradictory"),
        ("constraints = ['a > 1 and a < 1']\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "contradictory"),
        ("constraints = ['__import__(\"os\")']\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "may be called"),
        ("constraints = ['a.real > 0']\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "Attribute not allowed"),
        ("[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\nwhen = 'b > 0'\n[genes.b]\ntype = 'int'\nlow = 0\nhigh = 3\n",
         "declared before"),
        ("bogus = 1\n[genes.a]\ntype = 'int'\nlow = 0\nhigh = 3\n", "unknown top-level"),
        ("[genes.a\n", "not valid TOML"),
    ],
)
def test_bad_spaces_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_space(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such search space"):
        load_space(tmp_path / "nope.toml")


def test_duplicate_and_bad_names() -> None:
    with pytest.raises(InvalidInputError, match="twice"):
        SearchSpace((IntGene("a", 0, 1), ChoiceGene("a", ("x",))))
    with pytest.raises(InvalidInputError, match="identifier"):
        IntGene("not a name", 0, 1)
    with pytest.raises(InvalidInputError, match="no genes"):
        SearchSpace(())


def test_repair_satisfies_constraints() -> None:
    space = SearchSpace(
        (IntGene("a", 0, 20), IntGene("b", 0, 20)), constraints=("a + b <= 10", "b >= a")
    )
    rng = np.random.default_rng(0)
    repaired = space.repair({"a": 20, "b": 0}, rng)
    assert repaired is not None and space.is_valid(repaired)


def test_user_predicate() -> None:
    space = SearchSpace((IntGene("a", 0, 9),), predicate=lambda g: g["a"] % 2 == 0)
    rng = np.random.default_rng(0)
    assert all(space.sample_valid(rng)["a"] % 2 == 0 for _ in range(20))  # type: ignore[index]
    contradictory = SearchSpace((IntGene("a", 0, 9),), predicate=lambda g: False)
    with pytest.raises(InvalidInputError, match="contradictory"):
        contradictory.check_feasible()


def test_float_and_bool_genes_from_toml(tmp_path: Path) -> None:
    space = load_space(
        write(
            tmp_path,
            "[genes.lr]\ntype = 'float'\nlow = 0.0001\nhigh = 0.1\nlog = true\n"
            "[genes.flag]\noptions = [false, true]\n",
        )
    )
    g = space.sample(np.random.default_rng(1))
    assert 1e-4 <= g["lr"] <= 0.1 and isinstance(g["flag"], bool)
    assert not space.is_valid({"lr": 0.5, "flag": True})
    assert not space.is_valid({"lr": 0.01, "flag": 1})  # type-exact options
