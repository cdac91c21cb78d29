"""Fleet generators (VM and container fleets), the TOML writer, and ``ksmsim gen``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ksmsim.cli import main
from ksmsim.workload import tomlwrite
from ksmsim.workload.generators import container_fleet, dump_scenario, random_mix, vm_fleet
from ksmsim.workload.host import Host
from ksmsim.workload.predict import ScenarioWorkload, predict
from ksmsim.workload.runner import run_scenario
from ksmsim.workload.scenario import Churn, Mmap, Run, parse_scenario


def mmaps(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Return the regions each process maps, by process and region name."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for action in doc["timeline"]:
        if action["op"] == "mmap":
            out.setdefault(action["proc"], {})[action["region"]["name"]] = action["region"]
    return out


def test_vm_fleet_splits_each_guest_as_asked() -> None:
    doc = vm_fleet(5, 4, shared_fraction=0.5, zero_fraction=0.25, hot_fraction=0.5, images=2)
    guests = mmaps(doc)
    assert list(guests) == ["vm0", "vm1", "vm2", "vm3", "vm4"]
    for k, regions in enumerate(guests.values()):
        assert {n: r["pages"] for n, r in regions.items()} == {
            "image": 512,
            "zero": 256,
            "private": 128,
            "hot": 128,
        }
        assert regions["image"]["fill"] == "repeat:512"
        assert regions["image"]["salt"] == f"image{k % 2}"
        assert regions["private"]["fill"] == regions["hot"]["fill"] == "unique"
    parse_scenario(doc, "fleet")


def test_vm_fleet_staggers_boots_and_draws_rates_from_the_seed() -> None:
    doc = vm_fleet(4, 1, writes_per_s=(10.0, 20.0), boot_stagger_s=7.5, run_s=30, seed=5)
    scenario = parse_scenario(doc, "fleet")
    runs = [a.seconds for a in scenario.timeline if isinstance(a, Run)]
    assert runs == [7.5, 7.5, 7.5, 30]
    rates = [a.writes_per_s for a in scenario.timeline if isinstance(a, Churn)]
    assert len(rates) == 4 and all(10 <= r <= 20 for r in rates)
    assert len(set(rates)) > 1
    assert doc == vm_fleet(4, 1, writes_per_s=(10.0, 20.0), boot_stagger_s=7.5, run_s=30, seed=5)
    other = vm_fleet(4, 1, writes_per_s=(10.0, 20.0), boot_stagger_s=7.5, run_s=30, seed=6)
    assert [a["writes_per_s"] for a in other["timeline"] if a["op"] == "churn"] != rates
    # A guest's regions are mapped when it boots: after the runs of the guests before it.
    ops = [(a.op, getattr(a, "proc", None)) for a in scenario.timeline]
    first_vm3 = ops.index(("mmap", ("vm3",)))
    assert sum(1 for op, _ in ops[:first_vm3] if op == "run") == 3
    assert all(isinstance(a, Mmap | Churn | Run) for a in scenario.timeline[1:-1])


def test_vm_fleet_savings_on_the_model() -> None:
    """Three guests of 256 pages: 128 image pages shared, 64 zero pages each, no churn."""
    doc = vm_fleet(3, 1, shared_fraction=0.5, zero_fraction=0.25, hot_fraction=0.0, run_s=1)
    doc["tunables"] = {"pages_to_scan": 1000}
    pred = predict(ScenarioWorkload(parse_scenario(doc, "fleet")))
    assert pred.converged
    assert pred.pages_shared == 128 + 1  # the image's pages and one zero page
    assert pred.pages_sharing == 2 * 128 + (3 * 64 - 1)
    assert pred.saved_pages == pred.pages_sharing


def test_container_fleet_shares_runtime_and_image_libraries() -> None:
    doc = container_fleet(
        6, runtime_mib=1, images=2, image_mib=2, private_mib=1, zero_fraction=0.125, seed=3, run_s=1
    )
    members = mmaps(doc)
    assert len(members) == 6
    salts = [regions["libs"]["salt"] for regions in members.values()]
    assert set(salts) <= {"image0", "image1"}
    for regions in members.values():
        assert regions["runtime"] == {
            "name": "runtime",
            "pages": 256,
            "fill": "repeat:256",
            "salt": "runtime",
        }
        assert regions["zero"]["pages"] == 32
        assert regions["heap"]["pages"] + regions["hot"]["pages"] == 224
    doc["tunables"] = {"pages_to_scan": 5000}
    doc["timeline"] = [a for a in doc["timeline"] if a["op"] != "churn"]
    pred = predict(ScenarioWorkload(parse_scenario(doc, "ct")))
    images = len(set(salts))
    assert pred.pages_shared == 256 + images * 512 + 1
    assert pred.pages_sharing == 5 * 256 + (6 - images) * 512 + (6 * 32 - 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: vm_fleet(0, 1), "at least one guest"),
        (lambda: vm_fleet(1, 0), "at least one page"),
        (lambda: vm_fleet(1, 1, shared_fraction=1.5), "between 0 and 1"),
        (lambda: vm_fleet(1, 1, shared_fraction=0.7, zero_fraction=0.7), "exceed 1"),
        (lambda: vm_fleet(1, 1, writes_per_s=(5.0, 1.0)), "low <= high"),
        (lambda: vm_fleet(1, 1, boot_stagger_s=-1), "stagger"),
        (lambda: container_fleet(2, runtime_mib=-1), ">= 0 MiB"),
        (lambda: container_fleet(1, images=0), "one image"),
    ],
)
def test_fleet_generators_refuse_bad_parameters(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_toml_writer_round_trips_awkward_documents() -> None:
    doc = {
        "name": 'quote " backslash \\ newline \n tab \t del \x7f é 😀',
        "n": -3,
        "x": 0.1,
        "flag": False,
        "empty": {},
        "nums": [1, 2, 3],
        "table": {"a key": 1, "nested": {"deep": ["x", {"y": 2}]}},
        "rows": [{"k": 1, "inner": [{"a": 1}, {"b": [True]}]}, {"k": 2}],
    }
    assert tomllib.loads(tomlwrite.dumps(doc)) == doc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_generator_writes_valid_toml_and_json(seed: int) -> None:
    for doc in (vm_fleet(3, 1, seed=seed), container_fleet(3, seed=seed), random_mix(seed)):
        assert tomllib.loads(dump_scenario(doc, "toml")) == doc
        assert json.loads(dump_scenario(doc, "json")) == doc
        parse_scenario(doc, "gen")


@pytest.mark.parametrize("kernel", ["keyhole", "pinned", "v2.6.33"])
def test_random_mix_sets_only_tunables_the_kernel_has(kernel: str) -> None:
    # A tunable the kernel lacks would end the run at that step (an error, not a mix of every
    # action); the same draws give pages_to_scan instead, so v6.18's mixes are unchanged.
    files = set(Host(kernel).sysfs.writable())
    sets = [
        a for s in range(40) for a in random_mix(s, kernel=kernel)["timeline"] if a["op"] == "set"
    ]
    assert sets and all(set(a["tunables"]) <= files for a in sets)
    v6 = [a for s in range(40) for a in random_mix(s)["timeline"] if a["op"] == "set"]
    assert {n for a in v6 for n in a["tunables"]} == {
        "use_zero_pages",
        "smart_scan",
        "pages_to_scan",
    }
    for seed in range(40):
        mine, v6_doc = random_mix(seed, kernel=kernel), random_mix(seed)
        assert len(mine["timeline"]) == len(v6_doc["timeline"])
        for a, b in zip(mine["timeline"], v6_doc["timeline"], strict=True):
            assert a == b or (
                a["op"] == b["op"] == "set" and a["tunables"].keys() == {"pages_to_scan"}
            )
    assert run_scenario(parse_scenario(random_mix(2, kernel=kernel), "mix"))["ok"]  # four such sets


def test_gen_commands_write_scenarios_that_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.toml"
    args = ["gen", "vm-fleet", "--guests", "3", "--guest-mib", "0.5", "--writes-per-s", "5:9"]
    assert main([*args, "--boot-stagger", "1", "--run", "2", "--seed", "4", "-o", str(out)]) == 0
    doc = tomllib.loads(out.read_text())
    assert doc == vm_fleet(3, 0.5, writes_per_s=(5.0, 9.0), boot_stagger_s=1.0, run_s=2.0, seed=4)
    assert main(["run", str(out), "-o", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["snapshots"][-1]["global"]["pages_sharing"] > 0

    js = tmp_path / "ct.json"
    assert (
        main(["gen", "container-fleet", "--containers", "2", "--private-mib", "1", "-o", str(js)])
        == 0
    )
    assert json.loads(js.read_text())["processes"][1]["name"] == "ct1"
    capsys.readouterr()
    assert main(["gen", "random-mix", "--seed", "3", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == random_mix(3)
    assert run_scenario(parse_scenario(random_mix(3), "mix"))["snapshots"]


@pytest.mark.parametrize(
    "argv",
    [
        ["gen", "vm-fleet", "--guests", "0", "--guest-mib", "1"],
        ["gen", "vm-fleet", "--guests", "2", "--guest-mib", "1", "--writes-per-s", "fast"],
        ["gen", "vm-fleet", "--guest-mib", "1"],
        ["gen", "nonsense"],
        ["gen", "container-fleet", "--containers", "2", "-o", "/nonexistent/dir/x.toml"],
    ],
)
def test_gen_bad_input_is_one_line_and_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ksmsim")


FLEET_EXAMPLES = {
    "vm_fleet_small.toml": lambda: vm_fleet(
        4, 1, boot_stagger_s=2, run_s=10, writes_per_s=(5.0, 20.0), seed=7
    ),
    "container_fleet_small.toml": lambda: container_fleet(
        6,
        runtime_mib=0.5,
        images=2,
        image_mib=0.5,
        private_mib=0.5,
        start_stagger_s=1,
        run_s=10,
        writes_per_s=10,
        seed=7,
    ),
}


@pytest.mark.parametrize("name", sorted(FLEET_EXAMPLES))
def test_fleet_examples_are_what_the_generators_write_and_predict(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "fleets" / name
    assert tomllib.loads(path.read_text()) == FLEET_EXAMPLES[name]()
    pred = predict(ScenarioWorkload(parse_scenario(FLEET_EXAMPLES[name](), path.stem)))
    assert pred.converged and pred.saved_pages > 0 and pred.churn_writes_per_s > 0
