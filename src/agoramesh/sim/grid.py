"""The grid's geometry: which cells are free, shortest walks around walls, and wall layouts.

Walls are drawn so that every free cell stays reachable from every other, which
is what lets the world promise that each task can be reached.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Container, Sequence
from dataclasses import dataclass

from agoramesh.errors import InvalidWorldCall

__all__ = ("Cell", "Grid", "fmt", "make_walls", "manhattan")

Cell = tuple[int, int]

# BFS expands neighbours in this fixed order, so GOTO's path is deterministic too.
_STEPS: tuple[Cell, ...] = ((0, -1), (1, 0), (0, 1), (-1, 0))
_WALL_ATTEMPTS = 20


def manhattan(a: Cell, b: Cell) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def fmt(cell: Cell) -> str:
    return f"({cell[0]}, {cell[1]})"


@dataclass(frozen=True)
class Grid:
    """``width`` x ``height`` cells, ``(0, 0)`` top left, with walls no one may enter."""

    width: int
    height: int
    walls: frozenset[Cell] = frozenset()

    def is_open(self, cell: Cell) -> bool:
        x, y = cell
        return 0 <= x < self.width and 0 <= y < self.height and cell not in self.walls

    def free_cells(self) -> list[Cell]:
        return [(x, y) for y in range(self.height) for x in range(self.width)
                if (x, y) not in self.walls]

    def distances(self, start: Cell, until: Container[Cell] = ()) -> dict[Cell, Cell]:
        """BFS from ``start``: each reachable cell mapped to the cell it was reached from;
        it stops early once it expands a cell in ``until``."""
        came_from = {start: start}
        queue = deque([start])
        while queue:
            x, y = queue.popleft()
            if (x, y) in until:
                break
            for dx, dy in _STEPS:
                nxt = (x + dx, y + dy)
                if nxt not in came_from and self.is_open(nxt):
                    came_from[nxt] = (x, y)
                    queue.append(nxt)
        return came_from

    def path(self, start: Cell, goal: Cell) -> list[Cell]:
        came_from = self.distances(goal)  # from the goal, so parents lead from start to it
        path = [start]
        while path[-1] != goal:
            path.append(came_from[path[-1]])
        return path

    def free_cell(self, value: Sequence[int]) -> Cell:
        """``value`` as a cell, or an :class:`InvalidWorldCall` when it is not a free one."""
        cell = (int(value[0]), int(value[1])) if len(value) == 2 else None
        if cell is None or not self.is_open(cell):
            raise InvalidWorldCall(f"{list(value)!r:.60} is not a free cell of the "
                                   f"{self.width}x{self.height} grid")
        return cell


def make_walls(width: int, height: int, ratio: float, rng: random.Random) -> frozenset[Cell]:
    """``ratio`` of the cells as walls (a few fewer if need be) leaving the free cells connected."""
    cells = [(x, y) for y in range(height) for x in range(width)]
    grid = Grid(width, height)
    for _ in range(_WALL_ATTEMPTS):
        grid = Grid(width, height, frozenset(rng.sample(cells, round(ratio * len(cells)))))
        if _split(grid) is None:
            return grid.walls
    # Big crowded grids are almost never connected by chance: knock doors into the last
    # layout instead, which keeps the wall count close to the ratio asked for.
    while (split := _split(grid)) is not None:
        grid = Grid(width, height, grid.walls - _tunnel(Grid(width, height), *split))
    return grid.walls


def _split(grid: Grid) -> tuple[Cell, dict[Cell, Cell]] | None:
    """A free cell that the first free cell cannot reach, and what it does reach."""
    free = grid.free_cells()
    reached = grid.distances(free[0])
    return next(((cell, reached) for cell in free if cell not in reached), None)


def _tunnel(bare: Grid, start: Cell, reached: dict[Cell, Cell]) -> set[Cell]:
    """The cells of a shortest route from ``start`` into ``reached`` on the wall-less ``bare``."""
    came_from = bare.distances(start, until=reached)
    cell = next(c for c in came_from if c in reached)
    route = set()
    while cell != start:
        route.add(cell)
        cell = came_from[cell]
    return route
