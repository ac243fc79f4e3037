"""Frames of every family (pixels where the state says), the gymnasium ids, and video files."""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl  # noqa: F401  (registers the metarl/ ids)
from metarl.config import ConfigError
from metarl.envs import render
from metarl.envs.bandit import BatchedBandit
from metarl.envs.cartpole import BatchedCartPole, CartPoleTask
from metarl.envs.nav2d import BatchedNav2D, Nav2DFamilyConfig
from metarl.envs.pendulum import BatchedPendulum, PendulumTask
from metarl.envs.registration import ENV_IDS, FAMILY_IDS, installed, register_envs
from metarl.envs.tabular_mdp import BatchedTabularMDP
from metarl.families import FAMILIES, make_family
from pipelines.video import write_video

torch.set_num_threads(1)

HAS_MUJOCO = installed(("mujoco", "gymnasium.envs.mujoco"))
HAS_METAWORLD = installed(("mujoco", "metaworld"))


def _at(frame: np.ndarray, xy: tuple[float, float]) -> tuple[int, int, int]:
    x, y = xy
    return tuple(int(v) for v in frame[round(y), round(x)])  # type: ignore[return-value]


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- primitives ------------------------------------------------------------------------------

def test_primitives_paint_exactly_their_pixels() -> None:
    frame = render.blank(10, 12)
    assert frame.shape == (10, 12, 3) and frame.dtype == np.uint8
    assert (frame == 255).all()
    render.fill_rect(frame, 2, 3, 5, 4, (1, 2, 3))
    painted = np.argwhere((frame != 255).any(-1))
    assert painted.tolist() == [[3, 2], [3, 3], [3, 4]]  # rows 3..3, columns 2..4
    frame = render.blank(21, 21)
    render.fill_circle(frame, 10, 10, 3, (0, 0, 0))
    assert _at(frame, (10, 13)) == (0, 0, 0) and _at(frame, (13, 10)) == (0, 0, 0)
    assert _at(frame, (12, 13)) == (255, 255, 255)  # distance √13 > 3
    assert int((frame[..., 0] == 0).sum()) == 29  # lattice points in a radius-3 disc
    frame = render.blank(20, 20)
    render.draw_line(frame, 2, 2, 17, 17, (0, 0, 0), 1)
    assert all(_at(frame, (i, i)) == (0, 0, 0) for i in range(2, 18))
    assert _at(frame, (2, 17)) == (255, 255, 255)
    render.draw_line(frame, -50, -50, -10, -5, (0, 0, 0), 3)  # off the canvas: clipped away
    render.fill_circle(frame, 100, 100, 5, (0, 0, 0))
    assert int((frame[..., 0] == 0).sum()) == 16
    with pytest.raises(ValueError, match="height=0"):
        render.blank(0, 5)


def test_slot_and_render_mode_checks_name_the_value() -> None:
    assert render.check_slot(3, 4, 2, 1) == 9
    with pytest.raises(ValueError, match="task_index=3"):
        render.check_slot(3, 4, 3, 0)
    with pytest.raises(ValueError, match="env_index=-1"):
        render.check_slot(3, 4, 0, -1)
    assert render.check_render_mode("rgb_array", "X") == "rgb_array"
    with pytest.raises(ValueError, match="render_mode='human'"):
        render.check_render_mode("human", "X")


# --- the torch families ----------------------------------------------------------------------

def test_cartpole_frame_puts_cart_and_pole_where_the_state_says() -> None:
    env = BatchedCartPole([CartPoleTask(), CartPoleTask(pole_length=1.0, force_mag=-10.0)], 2)
    state = torch.zeros(2, 2, 4)
    state[0, 1, 0], state[0, 1, 2] = 1.0, 0.2  # slot (0, 1): cart right, pole leaning right
    env.set_state(state)
    upright, leaning = env.render_frame(0, 0), env.render_frame(0, 1)
    assert upright.shape == (render.FRAME_SIZE, render.FRAME_SIZE, 3)
    assert upright.dtype == np.uint8
    tip0 = render.cartpole_pixels(0.0, 0.0, 0.5)["pole_tip"]
    tip1 = render.cartpole_pixels(1.0, 0.2, 0.5)["pole_tip"]
    assert tip1[0] - tip0[0] > 50  # 1 m of cart + the lean
    assert _at(upright, tip0) == render.POLE and _at(leaning, tip0) != render.POLE
    assert _at(leaning, tip1) == render.POLE and _at(upright, tip1) != render.POLE
    assert _at(upright, render.cartpole_pixels(0.0, 0.0, 0.5)["cart"]) == render.CART
    # The second task: a pole twice as long, and reversed controls (red cart, red corner).
    reversed_frame = env.render_frame(1, 0)
    long_tip = render.cartpole_pixels(0.0, 0.0, 1.0)["pole_tip"]
    assert long_tip[1] < tip0[1] - 40
    assert _at(reversed_frame, long_tip) == render.POLE
    assert _at(reversed_frame, (128, 192)) == render.CART_REVERSED
    assert _at(reversed_frame, (10, 10)) == render.CART_REVERSED
    assert _at(upright, (10, 10)) == render.BACKGROUND
    with pytest.raises(ValueError, match="task_index=2"):
        env.render_frame(2, 0)


def test_nav2d_frame_shows_goal_agent_and_the_path_so_far() -> None:
    env = BatchedNav2D([[0.4, -0.3], [-0.2, 0.2]], 2, Nav2DFamilyConfig(max_steps=5))
    env.reset(_gen())
    frame = env.render_frame(0, 0)
    assert _at(frame, render.nav2d_pixel((0.4, -0.3), -0.5, 0.5)) == render.GOAL
    assert _at(frame, render.nav2d_pixel((0.0, 0.0), -0.5, 0.5)) == render.AGENT
    for _ in range(3):
        env.step(torch.tensor([0.1, 0.0]).expand(2, 2, 2))
    assert env.trail_length.tolist() == [[4, 4], [4, 4]]
    np.testing.assert_allclose(env.trail[0, 0, :4, 0].numpy(), [0.0, 0.1, 0.2, 0.3], atol=1e-6)
    frame = env.render_frame(0, 0)
    assert _at(frame, render.nav2d_pixel((0.3, 0.0), -0.5, 0.5)) == render.AGENT
    assert _at(frame, render.nav2d_pixel((0.15, 0.0), -0.5, 0.5)) == render.TRAIL
    assert _at(frame, render.nav2d_pixel((0.0, 0.0), -0.5, 0.5)) == render.TRAIL  # the start
    assert _at(env.render_frame(1, 0), render.nav2d_pixel((-0.2, 0.2), -0.5, 0.5)) == render.GOAL
    # Past the horizon the last entry is overwritten; an auto-reset restarts only that slot.
    for _ in range(4):
        env.step(torch.tensor([0.0, 0.1]).expand(2, 2, 2))
    assert env.trail_length.max().item() == 6
    np.testing.assert_allclose(env.trail[0, 0, 5].numpy(), [0.3, 0.4], atol=1e-6)
    ended = torch.tensor([[True, False], [False, False]])
    env.reset_done(_gen(), ended)
    assert env.trail_length.tolist() == [[1, 6], [6, 6]]
    np.testing.assert_allclose(env.trail[0, 0, 0].numpy(), [0.0, 0.0])


def test_pendulum_frame_rod_follows_angle_and_length() -> None:
    env = BatchedPendulum([PendulumTask(length=1.0), PendulumTask(length=0.5)], 1)
    env.set_state(torch.tensor([[[0.0, 0.0]], [[math.pi / 2, 0.0]]]))
    up, side = env.render_frame(0, 0), env.render_frame(1, 0)
    tip_up = render.pendulum_tip(0.0, 1.0)
    tip_side = render.pendulum_tip(math.pi / 2, 0.5)
    c = render.FRAME_SIZE / 2
    assert tip_up[0] == pytest.approx(c) and tip_up[1] < c - 50  # upright: straight above
    assert tip_side[1] == pytest.approx(c) and tip_side[0] < c - 25  # +π/2: to the left
    assert c - tip_side[0] == pytest.approx((c - tip_up[1]) / 2)  # half the length
    assert _at(up, tip_up) == render.ROD and _at(side, tip_up) == render.BACKGROUND
    assert _at(side, tip_side) == render.ROD and _at(up, tip_side) == render.BACKGROUND
    assert _at(up, (c, c)) == render.PIVOT


def test_bandit_frame_bars_are_the_pulls_so_far_against_the_probabilities() -> None:
    env = BatchedBandit(torch.tensor([[0.2, 0.9, 0.5]]), 2, num_pulls=10)
    env.reset(_gen())
    assert not env.watched
    env.render_frame()  # watched from here: the pulls are counted (an unwatched env: not)
    assert env.watched
    for arm in [1, 1, 1, 1, 0]:
        env.step(torch.tensor([[arm, 2]]))
    assert env.pulls.tolist() == [[[1, 4, 0], [0, 0, 5]]]
    frame = env.render_frame(0, 0)
    (a0, a1), (b0, b1), _ = render._bar_columns(3)
    span = render.BANDIT_BOTTOM - render.BANDIT_TOP
    mid = (b0 + b1) / 2
    assert _at(frame, (mid, render.BANDIT_BOTTOM - 0.35 * span)) == render.BAR  # 4/10 high
    assert _at(frame, (mid, render.BANDIT_BOTTOM - 0.45 * span)) == render.BACKGROUND
    assert _at(frame, (mid, render.BANDIT_BOTTOM - 0.9 * span)) == render.BEST_OUTLINE  # p=0.9
    assert _at(frame, ((a0 + a1) / 2, render.BANDIT_BOTTOM - 0.2 * span)) == render.BAR_OUTLINE
    assert _at(env.render_frame(0, 1), (mid, render.BANDIT_BOTTOM - 0.35 * span)) != render.BAR
    env.reset_done(_gen(), torch.tensor([[True, False]]))
    assert env.pulls.tolist() == [[[0, 0, 0], [0, 0, 5]]]


def test_tabular_mdp_frame_counts_visits_and_choices() -> None:
    # Two states, deterministic: action 0 stays, action 1 moves to the other state.
    transitions = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    env = BatchedTabularMDP(torch.zeros(1, 2, 2), transitions, 1, horizon=4)
    env.reset(_gen())
    env.render_frame()  # watched from here: visits and choices are counted
    for a in [1, 0, 0]:
        env.step(torch.tensor([[a]]))
    assert env.visits.tolist() == [[[1, 3]]]  # start in 0, then 1, 1, 1
    assert env.choices.tolist() == [[[[0, 1], [2, 0]]]]
    frame = env.render_frame()
    (a0, a1), (b0, b1) = render._bar_columns(2)
    bottom = render.MDP_SPLIT - 8
    assert _at(frame, ((b0 + b1) / 2, bottom - 2)) == render.CURRENT  # state 1, current
    assert _at(frame, ((a0 + a1) / 2, bottom - 2)) == render.BAR
    # State 0's bar is a third of state 1's.
    column = frame[:, round((a0 + a1) / 2)]
    height = int((column == render.BAR).all(-1).sum())
    assert height == pytest.approx((bottom - 12) / 3, abs=1.5)
    grid_top = render.MDP_SPLIT + 4
    row = (render.FRAME_SIZE - 12 - grid_top) / 2
    cell = [[_at(frame, ((x0 + x1) / 2, grid_top + (a + 0.5) * row))[0] for a in range(2)]
            for x0, x1 in ((a0, a1), (b0, b1))]
    assert cell[1][0] < cell[0][1] < cell[0][0] == 255  # 2 choices darker than 1, 0 white
    env.reset_done(_gen(), torch.tensor([[True]]))
    assert env.visits.tolist() == [[[1, 0]]] and env.choices.sum().item() == 0


# --- gymnasium ids ---------------------------------------------------------------------------

def _available(spec_id: str) -> bool:
    spec = next(s for s in ENV_IDS if s.id == spec_id)
    return not spec.needs or installed(spec.needs)


TORCH_IDS = [s.id for s in ENV_IDS if not s.needs]
MUJOCO_IDS = [s.id for s in ENV_IDS if s.needs]


def test_every_family_has_a_current_id_with_its_horizon() -> None:
    assert set(FAMILY_IDS) == set(FAMILIES)
    assert FAMILY_IDS["cartpole"] == "metarl/CartPole-v1"
    registered = register_envs()
    for spec in ENV_IDS:
        if not _available(spec.id):
            assert spec.id not in registered
            continue
        assert spec.id in gym.registry
        limit = gym.spec(spec.id).max_episode_steps
        assert limit == (spec.horizon if spec.time_limit else None)
        if FAMILY_IDS[spec.family] == spec.id:
            assert make_family(spec.family).max_steps == spec.horizon, spec.id
    assert gym.spec("metarl/CartPole-v0").max_episode_steps == 500  # kept: CartPole-v1's


def _balance(obs: np.ndarray) -> int:
    return 1 if obs[2] + 0.5 * obs[3] > 0 else 0


def _zero(env: gym.Env) -> np.ndarray:
    return np.zeros(env.action_space.shape, np.float32)


ACTIONS = {
    "metarl/CartPole-v1": _balance, "metarl/CartPole-v0": _balance,
    "metarl/Bandit-v0": lambda obs: 0, "metarl/TabularMDP-v0": lambda obs: 0,
}


@pytest.mark.parametrize("env_id", TORCH_IDS + MUJOCO_IDS)
def test_id_runs_to_its_horizon(env_id: str) -> None:
    if not _available(env_id):
        pytest.skip(f"{env_id}: its extra is not installed")
    spec = next(s for s in ENV_IDS if s.id == env_id)
    kwargs = {"task": {"goal_x": 0.5, "goal_y": 0.5}} if env_id == "metarl/Nav2D-v0" else {}
    render_mode = None if spec.needs else "rgb_array"  # MuJoCo's frames: tested below
    env = gym.make(env_id, render_mode=render_mode, **kwargs)
    obs, _ = env.reset(seed=0)
    act = ACTIONS.get(env_id, lambda obs: _zero(env))
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        obs, _, terminated, truncated, _ = env.step(act(obs))
        steps += 1
    assert steps == spec.horizon
    # A TimeLimit truncates at the horizon; bandit and MDP episodes terminate there.
    assert (truncated, terminated) == ((True, False) if spec.time_limit else (False, True))
    if render_mode is not None:
        frame = env.render()
        assert frame.shape == (render.FRAME_SIZE, render.FRAME_SIZE, 3)
        assert frame.dtype == np.uint8 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 2
    env.close()


@pytest.mark.parametrize("env_id", TORCH_IDS + MUJOCO_IDS)
def test_check_env_passes_with_rendering(env_id: str) -> None:
    if not _available(env_id):
        pytest.skip(f"{env_id}: its extra is not installed")
    mujoco = any(s.id == env_id and s.needs for s in ENV_IDS)
    env = gym.make(env_id, render_mode=None if mujoco else "rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=mujoco)
    messages = [str(w.message) for w in caught]
    if env_id == "metarl/Pendulum-v0":  # Pendulum-v1's [-2, 2] torque, as gymnasium's own
        messages = [m for m in messages if "symmetric and normalized" not in m]
    assert messages == []
    env.close()


@pytest.mark.skipif(not HAS_MUJOCO, reason="MuJoCo is not installed")
def test_mujoco_slots_step_on_after_an_ant_falls() -> None:
    """An ended slot keeps its observation and gets 0 while the others go on; the gymnasium
    view runs past the sub-envs' own time limit when asked for a longer one."""
    env = make_family("ant_dir").make_env([{"angle": 0.0}], 2)
    env.reset(_gen())
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        actions = torch.rand(1, 2, 8, generator=g) * 2 - 1
        env.step(actions)
        if env.done.any():
            break
    assert env.done.tolist() == [[False, True]]
    fallen = env.obs[0, 1].clone()
    _, reward, terminated = env.step(actions)
    assert torch.equal(env.obs[0, 1], fallen) and reward[0, 1].item() == 0.0
    assert reward[0, 0].item() != 0.0 and not terminated.any()
    env.close()
    view = gym.make("metarl/CheetahVel-v0", max_episode_steps=230, task={"velocity": 0.0})
    view.reset(seed=0)
    steps = [view.step(np.zeros(6, np.float32)) for _ in range(230)]
    assert [s[3] for s in steps].index(True) == 229


def test_tasks_are_the_family_task_dicts() -> None:
    env = gym.make("metarl/Nav2D-v0", task={"goal_x": 0.3, "goal_y": -0.2},
                   render_mode="rgb_array")
    _, info = env.reset(seed=0)
    np.testing.assert_allclose(info["goal"], [0.3, -0.2])
    assert _at(env.render(), render.nav2d_pixel((0.3, -0.2), -0.5, 0.5)) == render.GOAL
    task = {"pole_length": 0.9, "pole_mass": 0.3, "cart_mass": 1.0, "gravity": 9.8,
            "force_mag": -10.0}
    cartpole = gym.make("metarl/CartPole-v1", task=task, render_mode="rgb_array")
    assert cartpole.unwrapped.task == CartPoleTask(**task)
    cartpole.reset(seed=0)
    assert _at(cartpole.render(), (10, 10)) == render.CART_REVERSED
    pendulum = gym.make("metarl/Pendulum-v0", task={"mass": 1.0, "length": 0.5, "gravity": 9.0})
    assert pendulum.unwrapped.task == PendulumTask(1.0, 0.5, 9.0)
    with pytest.raises(ConfigError, match="pole_mass"):
        gym.make("metarl/CartPole-v1", task={**task, "pole_mass": -1.0})
    with pytest.raises(ValueError, match="pass one of them"):
        gym.make("metarl/Nav2D-v0", goal=[0, 0], task={"goal_x": 0.0, "goal_y": 0.0})


def test_render_without_a_render_mode_warns_and_returns_none() -> None:
    env = gym.make("metarl/Pendulum-v0")
    env.reset(seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert env.unwrapped.render() is None
    assert any("render_mode='rgb_array'" in str(w.message) for w in caught)
    bandit = gym.make("metarl/Bandit-v0", render_mode="rgb_array")
    with pytest.raises(RuntimeError, match="reset"):
        bandit.unwrapped.render()


@pytest.mark.skipif(not HAS_MUJOCO, reason="MuJoCo is not installed")
def test_mujoco_id_takes_a_task_and_rewards_it() -> None:
    env = gym.make("metarl/CheetahVel-v0", task={"velocity": 1.5})
    _, info = env.reset(seed=0)
    assert info["task"] == {"velocity": 1.5}
    _, reward, _, _, step_info = env.step(np.zeros(6, np.float32))
    assert step_info["task"] == {"velocity": 1.5}
    assert reward < -1.0  # standing still is 1.5 m/s off the target
    drawn = gym.make("metarl/CheetahDir-v0")
    directions = {drawn.reset(seed=s)[1]["task"]["direction"] for s in range(8)}
    assert directions == {-1.0, 1.0}
    with pytest.raises(ConfigError, match="direction"):
        gym.make("metarl/CheetahDir-v0", task={"direction": 0.5})


@pytest.mark.skipif(not HAS_MUJOCO, reason="MuJoCo is not installed")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_mujoco_render_without_gl_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from metarl.envs.mujoco_tasks import MuJoCoRenderError

    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    env = make_family("cheetah_vel").make_env([{"velocity": 1.0}], 1)
    env.reset(_gen())
    with pytest.raises(MuJoCoRenderError, match="MUJOCO_GL='no-such-backend'") as err:
        env.render_frame(0, 0)
    assert "MUJOCO_GL=egl" in str(err.value) and "MUJOCO_GL=osmesa" in str(err.value)
    env.close()
    # gymnasium's half-built viewer fails in its __del__: collect it here, where it is ignored.
    del err
    gc.collect()


RENDER_SCRIPT = textwrap.dedent("""
    import json, sys
    import gymnasium as gym
    import numpy as np
    import metarl
    from metarl.envs.mujoco_tasks import MuJoCoRenderError
    out = {}
    for env_id in sys.argv[1:]:
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        try:
            frame = env.render()
        except MuJoCoRenderError as err:
            out[env_id] = {"error": str(err)}
        else:
            out[env_id] = {"shape": list(frame.shape), "dtype": str(frame.dtype),
                           "colours": int(len(np.unique(frame.reshape(-1, 3), axis=0)))}
        env.close()
    print(json.dumps(out))
""")


@pytest.mark.skipif(not HAS_MUJOCO, reason="MuJoCo is not installed")
def test_mujoco_ids_render_frames_with_egl() -> None:
    """In a fresh process (MuJoCo reads MUJOCO_GL when it is imported) with MUJOCO_GL=egl."""
    ids = [i for i in MUJOCO_IDS if _available(i)]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", RENDER_SCRIPT, *ids], cwd=root,
                          env={**os.environ, "MUJOCO_GL": "egl"}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(ids)
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    if errors:
        assert all("MUJOCO_GL=osmesa" in e for e in errors.values())
        pytest.skip(f"no EGL on this machine: {next(iter(errors.values()))[:300]}")
    for env_id, r in results.items():
        assert r["shape"] == [480, 480, 3] and r["dtype"] == "uint8", env_id
        assert r["colours"] > 50, env_id  # a scene, not a blank buffer


# --- video -----------------------------------------------------------------------------------

def _frames(n: int) -> list[np.ndarray]:
    env = BatchedPendulum([PendulumTask()], 1)
    frames = []
    for i in range(n):
        env.set_state(torch.tensor([[[2 * math.pi * i / n, 0.0]]]))
        frames.append(env.render_frame())
    return frames


def test_gif_holds_every_frame(tmp_path: Path) -> None:
    from PIL import Image

    frames = _frames(6)
    path = write_video(frames, tmp_path / "sub" / "pendulum.gif", fps=20)
    assert path.is_file()
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        assert gif.info["duration"] == 50
        for i in (0, 3):
            gif.seek(i)
            np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), frames[i])


def test_write_video_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    frames = _frames(2)
    with pytest.raises(ValueError, match="suffix"):
        write_video(frames, tmp_path / "x.avi")
    with pytest.raises(ValueError, match="fps=0"):
        write_video(frames, tmp_path / "x.gif", fps=0)
    with pytest.raises(ValueError, match="at least one frame"):
        write_video([], tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"frames\[1\]: shape \(4, 4, 3\)"):
        write_video([frames[0], np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="uint8"):
        write_video([frames[0].astype(np.float32)], tmp_path / "x.gif")
    if installed(("imageio_ffmpeg",)):
        assert write_video(frames, tmp_path / "x.mp4", fps=10).stat().st_size > 0
    else:
        with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
            write_video(frames, tmp_path / "x.mp4")
