"""The cost model: predictions from the defaults, from the repository's own last run
(scaled by its growth), and from a robust fit over similar repositories."""

from dataclasses import replace
from pathlib import Path

import pytest

from custode.maintenance.cost import (
    CALIBRATE_RECENT,
    COMPARABLE,
    DEFAULTS,
    GRAPH_REUSE,
    LOOSE_WEIGHT,
    MIB,
    Calibration,
    CostModel,
    Prediction,
    Rate,
    Sample,
    Size,
    sample_of,
    theil_sen,
)
from custode.records.state import LatestResult
from custode.scan.discovery import Repository
from custode.scan.repostate import RepoState, inspect_failed


def _state(name: str, mib: float, objects: int = 10_000, refs: int = 100) -> RepoState:
    repo = Repository(Path("/srv"), Path(f"/srv/{name}"), Path(f"/srv/{name}"), "bare", name)
    return replace(inspect_failed(repo, "x"), problems=(), pack_bytes=int(mib * MIB),
                   packed_objects=objects, refs=refs)  # fmt: skip


def _sample(name: str, kind: str, seconds: float, mib: float, at: float = 1.0) -> Sample:
    return Sample(kind, ("/srv", name), at, seconds, Size(int(mib * MIB), 10_000, 100))


#: a repack priced by the bytes: 1 s plus 0.5 s per MiB
LINEAR = {"full_repack": Rate("bytes", 1.0, 0.5, 0, 1000)}


def test_no_history_predicts_from_the_defaults_growing_with_size() -> None:
    model = CostModel()
    small = model.predict(_state("a", 1, objects=1_000), "full_repack")
    big = model.predict(_state("b", 500, objects=2_000_000), "full_repack")
    assert small.basis == big.basis == "defaults"
    assert 0 < small.seconds < big.seconds
    assert 0 < small.memory_bytes < big.memory_bytes
    assert big.seconds == pytest.approx(
        DEFAULTS["full_repack"].seconds(Size.of(_state("b", 500, objects=2_000_000)))
    )
    # the inputs, recorded with it (no largest pack known: every object outside it)
    assert big.size == Size(500 * MIB, 2_000_000, 100, rolled=2_000_000)
    for kind in DEFAULTS:  # every task kind has a default
        assert model.predict(_state("a", 1), kind).seconds > 0


def test_the_same_repository_s_last_run_is_the_prediction() -> None:
    model = CostModel([_sample("a", "full_repack", 42.0, 10)], LINEAR)
    p = model.predict(_state("a", 10), "full_repack")
    assert p.basis == "this repository"
    assert p.seconds == pytest.approx(42.0)  # not the rate's 6 s: this repository is slow
    other = model.predict(_state("b", 10), "full_repack")
    assert other.basis == "defaults" and other.seconds == pytest.approx(6.0)


def test_a_repository_that_grew_is_scaled_by_its_growth_fixed_cost_apart() -> None:
    older = _sample("a", "full_repack", 12.0, 10, at=1.0)
    latest = _sample("a", "full_repack", 6.0, 10, at=2.0)  # the latest run is the one used
    model = CostModel([latest, older], LINEAR)
    p = model.predict(_state("a", 16), "full_repack")
    # the rate says 6 s then, 9 s now: 6 s * 9 / 6
    assert p.seconds == pytest.approx(9.0)
    assert p.basis == "this repository"
    shrunk = model.predict(_state("a", 5), "full_repack")
    assert shrunk.seconds == pytest.approx(6.0 * 3.5 / 6.0)


@pytest.mark.parametrize("mib", [1.0, 30.0, 400.0])
def test_a_last_run_on_work_more_than_twice_as_different_is_not_scaled(mib: float) -> None:
    """A neglected repository's first night (or a night shared with a large repack)
    multiplied by a large factor says more about that night than about the repository:
    past ``COMPARABLE`` the fleet's fit or the defaults predict."""
    model = CostModel([_sample("a", "full_repack", 6.0, 10)], LINEAR)
    p = model.predict(_state("a", mib), "full_repack")
    assert p.basis == "defaults"
    assert p.seconds == pytest.approx(LINEAR["full_repack"].seconds(Size.of(_state("a", mib))))
    ratio = LINEAR["full_repack"].seconds(p.size) / LINEAR["full_repack"].seconds(
        _sample("a", "full_repack", 6.0, 10).size
    )
    assert not 1 / COMPARABLE <= ratio <= COMPARABLE


def test_similar_repositories_fit_a_rate_robust_to_an_outlier() -> None:
    # 2 s + 0.1 s per MiB on the fleet, and one night that was ten times slower
    samples = [_sample(f"r{i}", "full_repack", 2 + 0.1 * mib, mib)
               for i, mib in enumerate((10, 50, 100, 200, 400))]  # fmt: skip
    samples.append(_sample("slow", "full_repack", 10 * (2 + 0.1 * 300), 300))
    model = CostModel(samples, LINEAR)
    p = model.predict(_state("new", 1000), "full_repack")
    assert p.basis == "similar repositories"
    assert p.seconds == pytest.approx(102.0, rel=0.01)  # not LINEAR's 501 s
    assert model.rate("full_repack").fixed == pytest.approx(2.0, rel=0.01)


def test_two_repositories_are_not_a_fleet() -> None:
    samples = [_sample(f"r{i}", "full_repack", 100.0, 10) for i in range(2)]
    assert CostModel(samples, LINEAR).predict(_state("new", 10), "full_repack").basis == "defaults"


def test_theil_sen_needs_two_sizes_and_never_goes_negative() -> None:
    assert theil_sen([(1.0, 5.0), (1.0, 6.0)]) is None
    assert theil_sen([(1.0, 5.0), (2.0, 1.0), (3.0, 0.5)]) == (1.0, 0.0)  # the median


def test_history_rows_become_samples_only_with_their_inputs() -> None:
    def row(outcome: str, details: dict[str, object]) -> LatestResult:
        return LatestResult("full_repack", "/srv", "a", 5.0, outcome, 3.0, details, None)

    inputs = {"inputs": {"bytes": 10, "objects": 2, "refs": 1}}
    assert sample_of(row("ok", {"predicted": inputs})) == Sample(
        "full_repack", ("/srv", "a"), 5.0, 3.0, Size(10, 2, 1)
    )
    assert sample_of(row("failed", {"predicted": inputs})) is None
    assert sample_of(row("ok", {"reason": "written before the cost model"})) is None
    assert sample_of(row("ok", {"predicted": {"inputs": {"bytes": "10"}}})) is None


def _grown(
    name: str, *, objects: int, loose: int = 0, graph: bool = False, refs: int = 100, new: int = 0
) -> RepoState:
    """A repository of ``objects``: ``loose`` of them loose, ``new`` packed beside its
    largest pack (a day's pushes since the last repack), the rest in that pack."""
    state = _state(name, 1, objects=objects - loose, refs=refs)
    return replace(state, loose_objects=loose, commit_graph=graph,
                   base_pack_objects=objects - loose - new)  # fmt: skip


def test_a_repack_of_loose_objects_predicts_a_cheaper_one_once_they_are_packed() -> None:
    # the first night packed 1,000 loose objects (no delta to reuse: each is inflated,
    # hashed and searched); the next, 3,000 objects in packs whose deltas are reused
    rate = {"full_repack": Rate("objects", 0.1, 0.1)}
    then = Size.of(_grown("a", objects=2_000, loose=1_000))
    model = CostModel([Sample("full_repack", ("/srv", "a"), 1.0, 1.0, then)], rate)
    p = model.predict(_grown("a", objects=3_000), "full_repack")
    assert p.seconds < 1.0  # the old model scaled the object count up: 1.33 s
    # the loose objects made that night more than twice the work: the rate predicts
    assert (0.1 + 0.1 * (1 + 1 * LOOSE_WEIGHT)) / (0.1 + 0.3) > COMPARABLE
    assert p.basis == "defaults" and p.seconds == pytest.approx(0.1 + 0.3)
    assert p.size.loose == 0 and then.loose == 1_000
    # a few loose objects then: the last run, scaled
    few = Size.of(_grown("a", objects=2_900, loose=50))
    model = CostModel([Sample("full_repack", ("/srv", "a"), 1.0, 0.5, few)], rate)
    p = model.predict(_grown("a", objects=3_000), "full_repack")
    assert p.basis == "this repository"
    assert p.seconds == pytest.approx(0.5 * 0.4 / (0.1 + 0.1 * (2.9 + 0.05 * (LOOSE_WEIGHT - 1))))


def test_a_commit_graph_beside_an_existing_one_costs_a_share_of_one_from_scratch() -> None:
    then = Size.of(_grown("a", objects=10_000))  # none yet: every commit parsed
    model = CostModel([Sample("write_commit_graph", ("/srv", "a"), 1.0, 0.12, then)])
    p = model.predict(_grown("a", objects=10_200, graph=True), "write_commit_graph")
    rate = DEFAULTS["write_commit_graph"]
    assert p.seconds < 0.12 / 2  # the old model: 0.12 s, grown a little
    assert rate.seconds(then) / rate.seconds(p.size) > COMPARABLE  # not scaled: the rate
    assert p.basis == "defaults" and p.seconds == pytest.approx(rate.seconds(p.size))
    assert model.predict(_grown("b", objects=10_000), "write_commit_graph").seconds == (
        pytest.approx(rate.seconds(then))
    )


def test_a_commit_graph_is_predicted_from_a_last_run_of_the_same_kind_of_work() -> None:
    """A small repository's graph from scratch (every commit parsed) took as long as the
    replacement beside it the next night, a day's pushes later (about 6.5 ms both in
    bench/maintenance): the defaults' shape, scaled from one to the other, predicted
    half of that. A replacement is predicted from a replacement."""
    scratch = Size.of(_grown("a", objects=1_000))
    model = CostModel([Sample("write_commit_graph", ("/srv", "a"), 1.0, 0.0065, scratch)])
    rate = DEFAULTS["write_commit_graph"]
    assert rate.seconds(replace(scratch, graph=True)) / rate.seconds(scratch) > 1 / COMPARABLE
    beside = model.predict(_grown("a", objects=1_100, graph=True), "write_commit_graph")
    assert beside.basis == "defaults"
    again = model.predict(_grown("a", objects=1_100), "write_commit_graph")  # graph removed
    assert again.basis == "this repository"
    replaced = Size.of(_grown("a", objects=1_100, graph=True))
    model = CostModel([Sample("write_commit_graph", ("/srv", "a"), 1.0, 0.0065, replaced)])
    nightly = model.predict(_grown("a", objects=1_200, graph=True), "write_commit_graph")
    assert nightly.basis == "this repository"
    assert nightly.seconds == pytest.approx(
        0.0065 * rate.seconds(nightly.size) / rate.seconds(replaced)
    )
    scratch_again = model.predict(_grown("a", objects=1_200), "write_commit_graph")
    assert scratch_again.basis != "this repository"


def test_a_commit_graph_beside_an_existing_one_parses_the_commits_pushed_since() -> None:
    """The graph is written after each night's repack, so the objects outside the largest
    pack and the loose ones arrived since: their commits are parsed as from scratch, where
    those the old graph lists are copied. Priced by the object count alone, a night's
    first replacements in bench/maintenance were predicted 1.4 to 2 times too short, and
    one beside 196 new objects (4.2 ms) the same as one beside 596 (6.8 ms)."""
    rate = DEFAULTS["write_commit_graph"]
    quiet, pushed = (Size.of(_grown("a", objects=1_800, graph=True, new=n)) for n in (0, 600))
    assert quiet.units("graph") == pytest.approx(GRAPH_REUSE * 1.8)
    assert pushed.units("graph") == pytest.approx(GRAPH_REUSE * 1.8 + 0.6)
    loose = Size.of(_grown("a", objects=1_800, graph=True, loose=100, new=500))
    assert loose.units("graph") == pytest.approx(pushed.units("graph"))
    model = CostModel()
    assert model.predict(_grown("a", objects=1_800, graph=True, new=600),
                         "write_commit_graph").seconds == pytest.approx(
        rate.seconds(pushed))  # fmt: skip
    assert rate.seconds(pushed) > rate.seconds(quiet) + rate.per_unit * 0.5
    # from scratch, every object counts once, wherever it is
    scratch = Size.of(_grown("a", objects=1_800, new=600))
    assert scratch.units("graph") == pytest.approx(1.8)


def test_a_prediction_is_recorded_to_a_tenth_of_a_millisecond() -> None:
    """A commit-graph takes 4-8 ms: at whole milliseconds, 5.4 ms predicted read as 5, and
    a task that took 6.8 ms as 36% off where it was 26% off."""
    p = CostModel().predict(_grown("a", objects=1_000), "write_commit_graph")
    assert replace(p, seconds=0.00543).to_json()["seconds"] == 0.0054


def test_geometric_and_incremental_repacks_cost_what_they_roll_up() -> None:
    """A geometric repack rolls up the packs beside the largest and the loose objects; an
    incremental one packs the loose objects: priced by all the objects, requests'
    geometric repack beside its 19 MB pack was predicted at 0.32 s where it took 0.13 s."""
    model = CostModel()
    tidy = replace(_state("a", 19, objects=43_000), base_pack_objects=42_600, loose_objects=48)
    spread = replace(tidy, base_pack_objects=10_000)
    assert Size.of(tidy).rolled == 400 and Size.of(spread).rolled == 33_000
    rate = DEFAULTS["geometric_repack"]
    geometric = model.predict(tidy, "geometric_repack").seconds
    assert geometric == pytest.approx(rate.fixed + rate.per_unit * (400 + 48 * LOOSE_WEIGHT) / 1000)
    assert 0.1 < geometric < 0.15 < model.predict(spread, "geometric_repack").seconds
    incremental = model.predict(tidy, "incremental_repack").seconds
    assert incremental == pytest.approx(0.10 + 0.017 * 48 * LOOSE_WEIGHT / 1000)
    assert model.predict(spread, "incremental_repack").seconds == pytest.approx(incremental)
    recorded = Size.from_json(Size.of(spread).to_json())
    assert recorded is not None and recorded.rolled == 33_000
    clamped = Size.from_json({"bytes": 1, "objects": 5, "refs": 1, "rolled": 9})
    assert clamped is not None and clamped.rolled == 5


def test_sizes_recorded_before_loose_and_graph_still_read() -> None:
    assert Size.from_json({"bytes": 10, "objects": 2, "refs": 1}) == Size(10, 2, 1, 0, False)
    new = Size(10, 5, 1, 3, True)
    assert Size.from_json(new.to_json()) == new
    assert Size.from_json({"bytes": 10, "objects": 2, "refs": 1, "loose": 9}) == Size(10, 2, 1, 2)
    assert Size.from_json({"bytes": 10, "objects": 2, "refs": 1, "graph": 1}) is None
    assert Size.from_json({"bytes": 10, "objects": 2, "refs": 1, "loose": -1}) is None
    with_refs = Size(10, 5, 40, 3, True, False, 30)
    assert Size.from_json(with_refs.to_json()) == with_refs
    assert Size.from_json({"bytes": 1, "objects": 1, "refs": 4, "loose_refs": 9}).loose_refs == 4
    assert Size.from_json({"bytes": 1, "objects": 1, "refs": 4, "loose_refs": True}) is None


def test_pack_refs_is_predicted_from_the_loose_refs_it_packs_and_deletes() -> None:
    """On the first nights of bench/maintenance a repository's ``pack-refs`` took about
    0.3 ms a loose ref (0.13 s for 500), where the packed ones of the corpus cost a
    hundredth of that: by the refs alone, 500 loose ones were predicted at 0.011 s."""
    loose = replace(_state("loose", 1), refs=500, loose_refs=501, symbolic_refs=1)  # HEAD
    packed = replace(_state("packed", 1), refs=5000, packed_refs=5000, loose_refs=1,
                     symbolic_refs=1)  # fmt: skip
    model = CostModel()
    assert Size.of(loose).loose_refs == 500 and Size.of(packed).loose_refs == 0
    assert model.predict(loose, "pack_refs").seconds == pytest.approx(0.005 + 0.29 * 0.5)
    assert model.predict(packed, "pack_refs").seconds < model.predict(loose, "pack_refs").seconds


def test_the_last_run_here_is_scaled_in_the_defaults_proportions_not_the_fleet_s() -> None:
    # a fleet night whose fit puts every second in the slope (no fixed cost): scaling the
    # repository's own last run by it would treat the fixed second as growing too
    fleet = [_sample(f"r{i}", "full_repack", float(mib), mib) for i, mib in enumerate((5, 10, 20))]
    # (a repository three times faster than the fleet: its own run stands, not shrunk)
    model = CostModel([*fleet, _sample("a", "full_repack", 3.0, 10)], LINEAR)
    assert model.rate("full_repack").fixed == pytest.approx(0.0)
    p = model.predict(_state("a", 16), "full_repack")
    assert p.basis == "this repository"
    assert p.seconds == pytest.approx(3.0 * 9.0 / 6.0)  # LINEAR's 1 s + 0.5 s/MiB; not 4.8 s
    assert model.predict(_state("new", 16), "full_repack").seconds == pytest.approx(16.0)


def test_one_night_near_the_fleet_s_fit_is_weighed_equally_with_it() -> None:
    """One night is one sample: within a factor 2 of what the fleet's fit predicts, the
    repository's own (scaled) run and the fit meet halfway (geometrically); further off,
    the repository is unlike the fleet and its own run stands; with no fit, likewise."""
    fleet = [_sample(f"r{i}", "full_repack", float(mib), mib) for i, mib in enumerate((5, 10, 20))]
    for own, expected in ((15.0, (15.0 * 10.0) ** 0.5), (5.0, (5.0 * 10.0) ** 0.5),
                          (25.0, 25.0), (4.0, 4.0)):  # fmt: skip
        model = CostModel([*fleet, _sample("a", "full_repack", own, 10)], LINEAR)
        p = model.predict(_state("a", 10), "full_repack")  # the fit: 10 s
        assert p.basis == "this repository" and p.seconds == pytest.approx(expected), own
    alone = CostModel([_sample("a", "full_repack", 15.0, 10)], LINEAR)
    assert alone.predict(_state("a", 10), "full_repack").seconds == pytest.approx(15.0)


def test_a_repack_that_pruned_predicts_a_cheaper_one_without_the_prune() -> None:
    """The first night's repack also ran git prune (a walk of every object): the next
    plain repack of the same repository is predicted without that walk's share, and a
    repack that prunes again is predicted as long as before (sizes unchanged)."""
    state = _state("a", 10, objects=10_000)
    then = replace(Size.of(state), prune=True)
    model = CostModel([Sample("full_repack", ("/srv", "a"), 1.0, 0.5, then)])
    plain = model.predict(state, "full_repack")
    again = model.predict(state, "full_repack", prune=True)
    assert again.seconds == pytest.approx(0.5) and again.size.prune
    rate = DEFAULTS["full_repack"]
    share = rate.seconds(Size.of(state)) / rate.seconds(then)
    assert plain.seconds == pytest.approx(0.5 * share) and share < 0.8
    assert Size.from_json(then.to_json()) == then  # recorded, and read back, with it


def _prediction(kind: str = "full_repack", seconds: float = 1.0) -> Prediction:
    return Prediction(seconds, 50 * MIB, "defaults", Size(MIB, 1000, 10))


def test_a_night_corrects_its_predictions_once_three_tasks_of_the_kind_finished() -> None:
    night = Calibration()
    for actual in (0.5, 0.6):
        night.learn("full_repack", 1.0, actual)
    assert night.apply({"full_repack": _prediction()})["full_repack"].seconds == 1.0
    night.learn("full_repack", 1.0, 0.7)
    night.learn("write_commit_graph", 1.0, 1.9)  # another kind teaches this one nothing
    corrected = night.apply({"full_repack": _prediction(seconds=2.0)})["full_repack"]
    assert corrected.seconds == pytest.approx(1.2)  # the median ratio, 0.6
    assert corrected.calibration == pytest.approx(0.6)
    assert corrected.memory_bytes == 50 * MIB  # a host's load does not change memory
    assert corrected.to_json()["calibration"] == 0.6
    assert night.apply({"write_commit_graph": _prediction()})["write_commit_graph"].seconds == 1


def test_a_night_s_correction_follows_its_recent_tasks_within_comparable() -> None:
    night = Calibration()
    for _ in range(CALIBRATE_RECENT):
        night.learn("full_repack", 1.0, 0.1)  # ten times faster than predicted
    assert night.factor("full_repack") == 1 / COMPARABLE  # never scaled beyond COMPARABLE
    for _ in range(CALIBRATE_RECENT // 2 + 1):
        night.learn("full_repack", 1.0, 1.1)  # the recent ones are the majority
    assert night.factor("full_repack") == pytest.approx(1.1)
    night.learn("full_repack", 0.0, 5.0)  # a prediction of nothing teaches nothing
    assert night.factor("full_repack") == pytest.approx(1.1)
