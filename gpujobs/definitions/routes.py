"""routes.generate@1: order a group of locations into a short route (a travelling-salesman heuristic).

Nearest-neighbour builds a tour, then 2-opt (reverse a stretch) and or-opt (move a run of up to three
stops) improve it until neither finds a shorter tour. The scan order is fixed and ties go to the lower
index, so the same input always gives the same route, unless the time limit cuts the search short, which
the result reports. Distances are great-circle (haversine) kilometres.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

from pydantic import Field, model_validator

from gpujobs.registry import JobContext, Params, job_definition

MIN_LOCATIONS = 2
MAX_LOCATIONS = 500  # the O(n^2) matrix and passes stay around a second each at this size
EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
DEFAULT_TIME_LIMIT_SECONDS = 20.0
MAX_TIME_LIMIT_SECONDS = 120.0
MAX_IMPROVEMENT_PASSES = 1_000
OR_OPT_MAX_RUN = 3
PROGRESS_INTERVAL_SECONDS = 1.0
# A move must win by more than float noise, or two equal tours could swap back and forth forever.
IMPROVEMENT_EPSILON_KM = 1e-9
DISTANCE_DECIMALS = 3  # metres


class Location(Params):
    """One place to visit: its coordinates, and optional labels copied into its stop in the result."""

    id: str | None = Field(None, max_length=64, description="your identifier, copied into the stop")
    name: str | None = Field(None, max_length=200, description="your label, copied into the stop")
    lat: float = Field(ge=-90, le=90, description="latitude in degrees")
    lng: float = Field(ge=-180, le=180, description="longitude in degrees")


class RouteParams(Params):
    """Params of `routes.generate@1`: the locations to order, where to start, and how long to search."""

    locations: list[Location] = Field(
        min_length=MIN_LOCATIONS,
        max_length=MAX_LOCATIONS,
        description="the places to visit, in any order; each stop in the result gives its index here",
    )
    startIndex: int = Field(0, ge=0, description="index in locations of the depot: the route starts here")
    returnToStart: bool = Field(
        True, description="a closed tour back to the depot, or (false) an open path ending anywhere"
    )
    timeLimitSeconds: float = Field(
        DEFAULT_TIME_LIMIT_SECONDS,
        gt=0,
        le=MAX_TIME_LIMIT_SECONDS,
        description="how long to keep improving the route; stoppedEarly in the result says it was cut short",
    )

    @model_validator(mode="after")
    def _start_exists(self) -> RouteParams:
        if self.startIndex >= len(self.locations):
            raise ValueError(
                f"startIndex {self.startIndex} is not one of the {len(self.locations)} locations"
            )
        return self


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lng) points: exact enough for routing, no map data needed."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def distance_matrix(points: list[tuple[float, float]]) -> list[list[float]]:
    """All pairwise distances, computed once: every later move reads them n^2 times."""
    n = len(points)
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dist[i][j] = dist[j][i] = haversine_km(points[i], points[j])
    return dist


def route_length(route: list[int], dist: list[list[float]], closed: bool) -> float:
    """Length of the route, including the leg back to its first stop when closed."""
    legs = sum(dist[a][b] for a, b in itertools.pairwise(route))
    return legs + (dist[route[-1]][route[0]] if closed and len(route) > 1 else 0.0)


def nearest_neighbour(dist: list[list[float]], start: int) -> list[int]:
    """Greedy construction: a tour typically within 25% of optimal, a good start for local search."""
    route, unvisited = [start], set(range(len(dist))) - {start}
    while unvisited:
        row = dist[route[-1]]
        nearest = min(unvisited, key=lambda j: (row[j], j))  # ties to the lower index: deterministic
        route.append(nearest)
        unvisited.remove(nearest)
    return route


def two_opt_pass(route: list[int], dist: list[list[float]], closed: bool) -> bool:
    """Reverse every stretch route[i..j] that shortens the route; the first stop never moves."""
    n, improved = len(route), False
    for i in range(1, n - 1):
        for j in range(i + 1, n):
            a, b, c = route[i - 1], route[i], route[j]
            e = route[j + 1] if j + 1 < n else (route[0] if closed else None)
            delta = dist[a][c] - dist[a][b]
            if e is not None:
                delta += dist[b][e] - dist[c][e]
            if delta < -IMPROVEMENT_EPSILON_KM:
                route[i : j + 1] = route[i : j + 1][::-1]
                improved = True
    return improved


def or_opt_pass(route: list[int], dist: list[list[float]], closed: bool) -> bool:
    """Move runs of 1-3 consecutive stops (either way round) to wherever they shorten the route most."""
    n, improved = len(route), False
    for run in range(1, OR_OPT_MAX_RUN + 1):
        for i in range(1, n - run + 1):
            first, last, before = route[i], route[i + run - 1], route[i - 1]
            after = route[i + run] if i + run < n else (route[0] if closed else None)
            removed = dist[before][first] - (
                0.0 if after is None else dist[before][after] - dist[last][after]
            )
            rest = route[:i] + route[i + run :]
            best: tuple[float, int, bool] | None = None
            for k, u in enumerate(rest):
                if k == i - 1:
                    continue  # its current place
                v = rest[k + 1] if k + 1 < len(rest) else (rest[0] if closed else None)
                gap = 0.0 if v is None else dist[u][v]
                forward = dist[u][first] + (0.0 if v is None else dist[last][v]) - gap
                backward = dist[u][last] + (0.0 if v is None else dist[first][v]) - gap
                for added, reverse in ((forward, False), (backward, True)):
                    if added < removed - IMPROVEMENT_EPSILON_KM and (best is None or added < best[0]):
                        best = (added, k, reverse)
            if best is not None:
                _, k, reverse = best
                moved = route[i : i + run][::-1] if reverse else route[i : i + run]
                route[:] = rest[: k + 1] + moved + rest[k + 1 :]
                improved = True
    return improved


def _stops(
    route: list[int], locations: list[dict[str, Any]], dist: list[list[float]]
) -> list[dict[str, Any]]:
    return [
        {
            "position": position,
            "index": index,
            **{key: locations[index][key] for key in ("id", "name", "lat", "lng")},
            "legKm": round(dist[route[position - 1]][index] if position else 0.0, DISTANCE_DECIMALS),
        }
        for position, index in enumerate(route)
    ]


@job_definition(
    "routes.generate",
    1,
    params_model=RouteParams,
    max_attempts=2,
    timeout_seconds=300,
    concurrency_limit=4,  # CPU-bound: leave worker processes for the other queues
    description="Orders up to 500 locations into a short route: nearest-neighbour, then 2-opt and or-opt.",
)
def generate_route(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Optimise the visiting order and report how much shorter it is than the order given."""
    locations, start, closed = params["locations"], params["startIndex"], params["returnToStart"]
    started = time.monotonic()
    deadline = started + params["timeLimitSeconds"]
    dist = distance_matrix([(loc["lat"], loc["lng"]) for loc in locations])
    naive = [start, *(i for i in range(len(locations)) if i != start)]
    route = nearest_neighbour(dist, start)
    ctx.progress(
        20, "initial route built", distanceKm=round(route_length(route, dist, closed), DISTANCE_DECIMALS)
    )

    passes, stopped_early, last_report = 0, True, time.monotonic()
    while passes < MAX_IMPROVEMENT_PASSES and time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        passes += 1
        # or-opt only when 2-opt is stuck: it costs about three 2-opt passes
        if not (two_opt_pass(route, dist, closed) or or_opt_pass(route, dist, closed)):
            stopped_early = False  # a local optimum for both neighbourhoods
            break
        if time.monotonic() - last_report >= PROGRESS_INTERVAL_SECONDS:
            last_report = time.monotonic()
            elapsed_share = (last_report - started) / params["timeLimitSeconds"]
            ctx.progress(min(95.0, 20 + 75 * elapsed_share), f"improvement pass {passes}", passes=passes)

    total, naive_total = route_length(route, dist, closed), route_length(naive, dist, closed)
    return {
        "stops": _stops(route, locations, dist),
        "returnToStart": closed,
        "returnLegKm": round(dist[route[-1]][start], DISTANCE_DECIMALS) if closed else None,
        "totalDistanceKm": round(total, DISTANCE_DECIMALS),
        "naiveDistanceKm": round(naive_total, DISTANCE_DECIMALS),
        "improvementPercent": round(100 * (naive_total - total) / naive_total, 2) if naive_total else 0.0,
        "algorithm": "nearest-neighbour + 2-opt + or-opt",
        "passes": passes,
        "stoppedEarly": stopped_early,
        "elapsedMs": int((time.monotonic() - started) * 1000),
    }
