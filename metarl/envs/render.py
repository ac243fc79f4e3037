"""``rgb_array`` frames of the cheap task families, drawn with numpy alone.

Two layers. The primitives (:func:`blank`, :func:`fill_rect`, :func:`outline_rect`,
:func:`fill_circle`, :func:`draw_line`, :func:`draw_polyline`) paint into an ``[H, W, 3]`` uint8
array in place, in pixel coordinates (``x`` right, ``y`` down, floats allowed, anything off the
canvas clipped). The scenes (:func:`cartpole_frame`, :func:`nav2d_frame`,
:func:`pendulum_frame`, :func:`bandit_frame`, :func:`tabular_mdp_frame`) draw one slot of a
family from plain numbers; each batched env's ``render_frame(task_index, env_index)`` reads its
slot and calls its scene, and each gymnasium view's ``render()`` calls that, so every family
has one drawing rule. The MuJoCo and Meta-World families render through MuJoCo instead
(:func:`metarl.envs.mujoco_tasks.render_mujoco`).

Colours are fixed module constants, so tests and viewers can find things by colour.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

Color = tuple[int, int, int]

FRAME_SIZE = 256
"""Height and width of every frame drawn here, pixels."""

BACKGROUND: Color = (255, 255, 255)
TRACK: Color = (110, 110, 110)
CART: Color = (40, 40, 40)
CART_REVERSED: Color = (200, 30, 30)
"""CartPole: the cart of a task whose controls are reversed (``force_mag < 0``)."""
POLE: Color = (202, 152, 101)
AXLE: Color = (129, 132, 203)
AGENT: Color = (30, 90, 220)
GOAL: Color = (20, 170, 60)
TRAIL: Color = (150, 180, 240)
BOX: Color = (200, 200, 200)
ROD: Color = (204, 77, 77)
PIVOT: Color = (30, 30, 30)
BAR: Color = (70, 110, 200)
BAR_OUTLINE: Color = (160, 160, 160)
BEST_OUTLINE: Color = (20, 170, 60)
"""Bandit: the outline of the arm with the highest success probability."""
CURRENT: Color = (230, 140, 20)
"""Tabular MDP: the bar of the current state."""
PROGRESS: Color = (120, 120, 120)

RENDER_MODES = ("rgb_array",)
"""The render modes of every family's gymnasium view."""

def blank(height: int = FRAME_SIZE, width: int = FRAME_SIZE,
          color: Color = BACKGROUND) -> np.ndarray:
    """A new ``[height, width, 3]`` uint8 frame filled with ``color``."""
    if height < 1 or width < 1:
        raise ValueError(f"height={height}, width={width}: a frame needs at least one pixel")
    return np.full((height, width, 3), color, dtype=np.uint8)


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel indices ``[a, b)`` covered by the interval ``[lo, hi)``, clipped to the canvas."""
    a, b = sorted((lo, hi))
    return max(0, round(a)), min(size, round(b))


def fill_rect(frame: np.ndarray, x0: float, y0: float, x1: float, y1: float,
              color: Color) -> None:
    """Fill the axis-aligned rectangle with corners ``(x0, y0)`` and ``(x1, y1)``."""
    xa, xb = _span(x0, x1, frame.shape[1])
    ya, yb = _span(y0, y1, frame.shape[0])
    if xa < xb and ya < yb:
        frame[ya:yb, xa:xb] = color


def outline_rect(frame: np.ndarray, x0: float, y0: float, x1: float, y1: float,
                 color: Color, thickness: int = 1) -> None:
    """Draw the border of a rectangle, ``thickness`` pixels wide, inside its corners."""
    xa, xb = sorted((x0, x1))
    ya, yb = sorted((y0, y1))
    t = thickness
    fill_rect(frame, xa, ya, xb, ya + t, color)
    fill_rect(frame, xa, yb - t, xb, yb, color)
    fill_rect(frame, xa, ya, xa + t, yb, color)
    fill_rect(frame, xb - t, ya, xb, yb, color)


def _box(frame: np.ndarray, xs: Sequence[float], ys: Sequence[float], pad: float
         ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel-centre grids of the bounding box of ``xs``, ``ys`` grown by ``pad`` (or None)."""
    xa, xb = _span(min(xs) - pad, max(xs) + pad + 1, frame.shape[1])
    ya, yb = _span(min(ys) - pad, max(ys) + pad + 1, frame.shape[0])
    if xa >= xb or ya >= yb:
        return None
    gy, gx = np.mgrid[ya:yb, xa:xb]
    return gx.astype(np.float64), gy.astype(np.float64)


def fill_circle(frame: np.ndarray, cx: float, cy: float, radius: float, color: Color) -> None:
    """Fill the disc of ``radius`` pixels centred on ``(cx, cy)``."""
    grid = _box(frame, [cx], [cy], radius)
    if grid is None:
        return
    gx, gy = grid
    inside = (gx - cx) ** 2 + (gy - cy) ** 2 <= radius**2
    frame[gy[inside].astype(int), gx[inside].astype(int)] = color


def draw_line(frame: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: Color,
              width: float = 1.0) -> None:
    """Paint every pixel within ``width / 2`` of the segment ``(x0, y0)``–``(x1, y1)``."""
    half = max(width, 1.0) / 2
    grid = _box(frame, [x0, x1], [y0, y1], half)
    if grid is None:
        return
    gx, gy = grid
    dx, dy = x1 - x0, y1 - y0
    length_sq = dx * dx + dy * dy
    if length_sq == 0:
        s = np.zeros_like(gx)
    else:  # position of each pixel's projection along the segment, clamped to its ends
        s = np.clip(((gx - x0) * dx + (gy - y0) * dy) / length_sq, 0.0, 1.0)
    inside = (gx - x0 - s * dx) ** 2 + (gy - y0 - s * dy) ** 2 <= half**2
    frame[gy[inside].astype(int), gx[inside].astype(int)] = color


def draw_polyline(frame: np.ndarray, points: np.ndarray, color: Color,
                  width: float = 1.0) -> None:
    """Join consecutive pixel points ``[K, 2]`` (x, y) with :func:`draw_line`."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for (xa, ya), (xb, yb) in itertools.pairwise(pts):
        draw_line(frame, xa, ya, xb, yb, color, width)


# --------------------------------------------------------------------------------- scenes

CARTPOLE_WORLD_WIDTH = 4.8 * 1.25
"""Metres across a CartPole frame: the ±2.4 m track and a margin."""


def cartpole_pixels(x: float, theta: float, pole_length: float) -> dict[str, tuple[float, float]]:
    """Where a CartPole frame puts things, ``(x, y)`` pixels: ``cart``, ``axle``, ``pole_tip``.

    ``pole_length`` is gymnasium's ``length``, half the pole; the pole drawn is twice it.
    """
    scale = FRAME_SIZE / CARTPOLE_WORLD_WIDTH
    cart = (FRAME_SIZE / 2 + x * scale, FRAME_SIZE * 0.75)
    axle = (cart[0], cart[1] - 8)
    tip = (axle[0] + 2 * pole_length * scale * math.sin(theta),
           axle[1] - 2 * pole_length * scale * math.cos(theta))
    return {"cart": cart, "axle": axle, "pole_tip": tip}


def cartpole_frame(x: float, theta: float, pole_length: float, force_mag: float,
                   x_threshold: float = 2.4) -> np.ndarray:
    """The track (with its ±``x_threshold`` ends), the cart and the pole at angle ``theta``.

    Args:
        x: cart position, m.
        theta: pole angle, rad (0 upright, positive leaning right).
        pole_length: half the pole's length, m (the task's ``pole_length``).
        force_mag: the task's push, N; negative (reversed controls) paints the cart red and
            puts a red square in the top-left corner.
        x_threshold: where the episode ends, m (tick marks on the track).

    """
    frame = blank()
    p = cartpole_pixels(x, theta, pole_length)
    scale = FRAME_SIZE / CARTPOLE_WORLD_WIDTH
    track_y = p["cart"][1] + 8
    draw_line(frame, 0, track_y, FRAME_SIZE, track_y, TRACK, 2)
    for end in (-x_threshold, x_threshold):
        tick = FRAME_SIZE / 2 + end * scale
        draw_line(frame, tick, track_y - 6, tick, track_y + 6, TRACK, 2)
    reversed_controls = force_mag < 0
    cart_color = CART_REVERSED if reversed_controls else CART
    cx, cy = p["cart"]
    fill_rect(frame, cx - 16, cy - 8, cx + 16, cy + 8, cart_color)
    draw_line(frame, *p["axle"], *p["pole_tip"], POLE, 6)
    fill_circle(frame, *p["axle"], 3, AXLE)
    if reversed_controls:
        fill_rect(frame, 4, 4, 16, 16, CART_REVERSED)
    return frame


def nav2d_pixel(point: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """Pixel ``(x, y)`` of a world point in a Nav2D frame showing ``[low, high]^2`` with margin."""
    pad = 0.25 * (high - low)
    scale = FRAME_SIZE / (high - low + 2 * pad)
    return ((point[0] - low + pad) * scale, FRAME_SIZE - (point[1] - low + pad) * scale)


def nav2d_frame(position: Sequence[float], goal: Sequence[float], trail: np.ndarray,
                low: float = -0.5, high: float = 0.5) -> np.ndarray:
    """The goal box, the path so far, the goal (green disc) and the agent (blue disc).

    Args:
        position: the agent's ``(x, y)``.
        goal: the task's goal ``(x, y)``.
        trail: ``[K, 2]`` positions since the episode began (oldest first).
        low: lower bound of the goal box ``[low, high]^2`` (the frame shows it with a margin).
        high: its upper bound.

    """
    frame = blank()
    x0, y0 = nav2d_pixel((low, low), low, high)
    x1, y1 = nav2d_pixel((high, high), low, high)
    outline_rect(frame, x0, y1, x1, y0, BOX)
    pts = np.asarray(trail, dtype=np.float64).reshape(-1, 2)
    draw_polyline(frame, np.array([nav2d_pixel(q.tolist(), low, high) for q in pts]
                                  ).reshape(-1, 2), TRAIL, 2)
    fill_circle(frame, *nav2d_pixel(goal, low, high), 6, GOAL)
    fill_circle(frame, *nav2d_pixel(position, low, high), 4, AGENT)
    return frame


PENDULUM_WORLD_RADIUS = 2.2
"""Metres from the pivot to a Pendulum frame's edge: rods up to 2 m fit."""


def pendulum_tip(theta: float, length: float) -> tuple[float, float]:
    """Pixel ``(x, y)`` of the rod's free end; the pivot is the frame's centre.

    ``theta = 0`` is upright and positive angles turn counter-clockwise, as gymnasium draws
    ``Pendulum-v1``.
    """
    scale = FRAME_SIZE / 2 / PENDULUM_WORLD_RADIUS
    c = FRAME_SIZE / 2
    return (c - length * scale * math.sin(theta), c - length * scale * math.cos(theta))


def pendulum_frame(theta: float, length: float) -> np.ndarray:
    """The rod from the centre at angle ``theta``, its drawn length proportional to ``length``."""
    frame = blank()
    c = FRAME_SIZE / 2
    tip = pendulum_tip(theta, length)
    draw_line(frame, c, c, *tip, ROD, 8)
    fill_circle(frame, *tip, 5, ROD)
    fill_circle(frame, c, c, 4, PIVOT)
    return frame


def _bar_columns(count: int) -> list[tuple[float, float]]:
    """``[x0, x1)`` pixel spans of ``count`` equal bars across the frame, with gaps."""
    margin, width = 12.0, FRAME_SIZE - 24.0
    slot = width / count
    gap = min(6.0, slot * 0.2)
    return [(margin + i * slot + gap / 2, margin + (i + 1) * slot - gap / 2)
            for i in range(count)]


BANDIT_TOP, BANDIT_BOTTOM = 16.0, FRAME_SIZE - 28.0
"""Pixel rows of a bandit frame's value 1 and value 0."""


def bandit_frame(pulls: Sequence[int], probs: Sequence[float], num_pulls: int) -> np.ndarray:
    """Pulls per arm so far as bars, inside outlines as high as the arms' probabilities.

    A bar's height is the arm's pulls over the trial's ``n``; the best arm's outline is green;
    a strip along the bottom shows how much of the trial has been played.

    Args:
        pulls: ``[k]`` times each arm has been pulled in this trial.
        probs: ``[k]`` the arms' success probabilities.
        num_pulls: pulls per trial, ``n``: a bar reaches the top after ``n`` pulls.

    """
    frame = blank()
    counts = np.asarray(pulls, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    span = BANDIT_BOTTOM - BANDIT_TOP
    best = int(np.argmax(p))
    for i, (x0, x1) in enumerate(_bar_columns(len(p))):
        share = min(counts[i] / num_pulls, 1.0)
        fill_rect(frame, x0, BANDIT_BOTTOM - share * span, x1, BANDIT_BOTTOM, BAR)
        outline_rect(frame, x0, BANDIT_BOTTOM - p[i] * span, x1, BANDIT_BOTTOM + 1,
                     BEST_OUTLINE if i == best else BAR_OUTLINE, 2)
    played = min(counts.sum() / num_pulls, 1.0)
    fill_rect(frame, 12, FRAME_SIZE - 16, 12 + played * (FRAME_SIZE - 24), FRAME_SIZE - 8,
              PROGRESS)
    return frame


MDP_SPLIT = FRAME_SIZE * 0.55
"""Pixel row between a tabular-MDP frame's visit bars (above) and choice grid (below)."""


def tabular_mdp_frame(visits: Sequence[int], choices: np.ndarray, state: int) -> np.ndarray:
    """Visits per state as bars, and below them a state × action grid of the choices made.

    The current state's bar is orange; a darker cell is a choice made more often, this episode.

    Args:
        visits: ``[S]`` times each state was occupied (the start state counts).
        choices: ``[S, A]`` times each action was taken in each state.
        state: the current state.

    """
    frame = blank()
    v = np.asarray(visits, dtype=np.float64)
    c = np.asarray(choices, dtype=np.float64)
    num_states, num_actions = c.shape
    top, bottom = 12.0, MDP_SPLIT - 8
    tallest = max(float(v.max()), 1.0)
    columns = _bar_columns(num_states)
    for s, (x0, x1) in enumerate(columns):
        height = v[s] / tallest * (bottom - top)
        fill_rect(frame, x0, bottom - height, x1, bottom, CURRENT if s == state else BAR)
        outline_rect(frame, x0, top, x1, bottom + 1, BAR_OUTLINE)
    most = max(float(c.max()), 1.0)
    grid_top, grid_bottom = MDP_SPLIT + 4, FRAME_SIZE - 12.0
    row = (grid_bottom - grid_top) / num_actions
    for s, (x0, x1) in enumerate(columns):
        for a in range(num_actions):
            shade = round(255 - 215 * c[s, a] / most)
            y0, y1 = grid_top + a * row + 1, grid_top + (a + 1) * row - 1
            fill_rect(frame, x0, y0, x1, y1, (shade, shade, shade))
            outline_rect(frame, x0, y0, x1, y1, BOX)
    return frame


def check_render_mode(render_mode: str | None, env_name: str) -> str | None:
    """``render_mode`` if it is None or ``rgb_array``; a ``ValueError`` naming it otherwise."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode={render_mode!r}: {env_name} renders {RENDER_MODES} "
                         "frames only (or None)")
    return render_mode


def check_slot(num_tasks: int, num_envs: int, task_index: int, env_index: int) -> int:
    """The flat (task-major) index of slot ``(task_index, env_index)``, or a ``ValueError``."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index={task_index}: expected 0 <= task_index < {num_tasks}")
    if not 0 <= env_index < num_envs:
        raise ValueError(f"env_index={env_index}: expected 0 <= env_index < {num_envs}")
    return task_index * num_envs + env_index
