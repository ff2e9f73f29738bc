"""routes.generate@1 run directly: better than the given order, locally optimal, deterministic, exact on
instances whose optimum is known."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from pydantic import ValidationError

from gpujobs.definitions.routes import MAX_LOCATIONS, haversine_km
from gpujobs.exceptions import JobCancelled


def _random_locations(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # fixed seed: the same instance on every run
    return [
        {"id": f"L{i}", "lat": rng.uniform(51.3, 51.7), "lng": rng.uniform(-0.5, 0.3)} for i in range(count)
    ]


def _circle(count: int, radius_deg: float = 0.05) -> list[dict[str, Any]]:
    return [
        {
            "id": f"C{k}",
            "lat": 48.85 + radius_deg * math.sin(2 * math.pi * k / count),
            "lng": 2.35 + radius_deg * math.cos(2 * math.pi * k / count),
        }
        for k in range(count)
    ]


def _tour_km(points: list[tuple[float, float]], closed: bool) -> float:
    legs = sum(haversine_km(a, b) for a, b in itertools.pairwise(points))
    return legs + (haversine_km(points[-1], points[0]) if closed else 0.0)


def _points(result: dict[str, Any]) -> list[tuple[float, float]]:
    return [(stop["lat"], stop["lng"]) for stop in result["stops"]]


def test_the_optimised_route_visits_every_location_once_and_beats_the_given_order(run_job, ctx):
    locations = _random_locations(40, seed=2024)
    result = run_job("routes.generate", {"locations": locations}, ctx)
    assert next(stop["index"] for stop in result["stops"]) == 0
    assert sorted(stop["index"] for stop in result["stops"]) == list(range(40))
    assert result["stops"][5]["id"] == locations[result["stops"][5]["index"]]["id"]
    assert result["totalDistanceKm"] < result["naiveDistanceKm"] and result["improvementPercent"] > 50
    assert result["totalDistanceKm"] == pytest.approx(_tour_km(_points(result), closed=True), abs=1e-3)
    legs = sum(stop["legKm"] for stop in result["stops"]) + result["returnLegKm"]
    assert legs == pytest.approx(result["totalDistanceKm"], abs=0.05)
    assert result["stoppedEarly"] is False and ctx.percents[0] == 20


def test_no_single_2opt_reversal_shortens_the_optimised_route(run_job):
    result = run_job("routes.generate", {"locations": _random_locations(40, seed=7)})
    points = _points(result)
    best = _tour_km(points, closed=True)
    for i in range(1, len(points) - 1):
        for j in range(i + 1, len(points)):
            reversed_stretch = points[:i] + points[i : j + 1][::-1] + points[j + 1 :]
            assert _tour_km(reversed_stretch, closed=True) >= best - 1e-9, (i, j)


def test_the_same_input_gives_the_same_route(run_job):
    params = {"locations": _random_locations(60, seed=99), "startIndex": 17}
    first, second = run_job("routes.generate", params), run_job("routes.generate", params)
    first.pop("elapsedMs"), second.pop("elapsedMs")
    assert first == second and first["stops"][0]["index"] == 17


def test_shuffled_points_on_a_circle_come_back_as_the_polygon(run_job):
    circle = _circle(16)
    perimeter = _tour_km([(p["lat"], p["lng"]) for p in circle], closed=True)
    shuffled = circle[:]
    random.Random(5).shuffle(shuffled)
    result = run_job("routes.generate", {"locations": shuffled})
    assert result["totalDistanceKm"] == pytest.approx(perimeter, abs=1e-3)
    assert result["naiveDistanceKm"] > 1.5 * perimeter
    order = [int(stop["id"][1:]) for stop in result["stops"]]
    steps = {(b - a) % 16 for a, b in itertools.pairwise(order)}
    assert steps in ({1}, {15})  # around the circle, one way or the other


def test_an_open_route_from_one_end_of_a_line_walks_straight_to_the_other(run_job):
    line = [{"id": f"P{k}", "lat": 10 + 0.01 * k, "lng": 20.0} for k in range(12)]
    shuffled = line[1:]
    random.Random(3).shuffle(shuffled)
    params = {"locations": [line[0], *shuffled], "returnToStart": False}
    result = run_job("routes.generate", params)
    assert [stop["id"] for stop in result["stops"]] == [p["id"] for p in line]
    assert result["returnLegKm"] is None
    assert result["totalDistanceKm"] == pytest.approx(haversine_km((10, 20), (10.11, 20)), abs=1e-3)


def test_route_generation_stops_when_cancelled(run_job, make_ctx):
    ctx = make_ctx(cancel_after_progress=1)
    with pytest.raises(JobCancelled):
        run_job("routes.generate", {"locations": _random_locations(30, seed=1)}, ctx)
    assert ctx.percents == [20]


@pytest.mark.parametrize(
    "params",
    [
        {"locations": [{"lat": 0, "lng": 0}]},
        {"locations": [{"lat": 0, "lng": 0}] * (MAX_LOCATIONS + 1)},
        {"locations": [{"lat": 91, "lng": 0}, {"lat": 0, "lng": 0}]},
        {"locations": [{"lat": 0, "lng": 181}, {"lat": 0, "lng": 0}]},
        {"locations": [{"lat": 0, "lng": 0}, {"lat": 1, "lng": 1}], "startIndex": 2},
        {"locations": [{"lat": 0, "lng": 0}, {"lat": 1, "lng": 1}], "timeLimitSeconds": 3600},
    ],
)
def test_route_params_outside_the_bounds_are_refused(run_job, params):
    with pytest.raises(ValidationError):
        run_job("routes.generate", params)
