"""The ``metarl`` command line."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

# Only the standard library at import: `metarl --help` and `--version` stay fast (no torch,
# no MLflow); each command imports what it needs.

EPILOG = """examples:
  dvc repro                           run the whole pipeline (only what changed)
  dvc exp run -S algo.name=rl2        the same pipeline with RL² instead of MAML
  metarl defaults task.nav2d algo.rl2 the defaults of sections params.yaml leaves out
  metarl stage train                  run one stage in this project
  metarl flow                         run all stages as a Prefect flow (no server needed)
  metarl report                       reports/report.html: curves, IQM, P(improvement), gate
  metarl serve --cron "0 3 * * *"     schedule the flow nightly (needs a Prefect server)
  metarl promote metarl-cartpole-maml 3   roll @champion back to version 3
  metarl adapt models:/metarl-cartpole-maml@champion --task-file tasks.json --out adapted
                                      adapt the champion to a task of yours
  metarl play --adapted adapted --episodes 3 --video run.gif   watch the adapted policy
  metarl bench sampler                batched sampler vs gymnasium's SyncVectorEnv
  metarl bench maml                   MAML on 2D navigation: s/iteration, returns, score
  metarl bench baselines --cells 10x5 RL²'s bandit/MDP baselines beside the paper's tables
  metarl bench rl2 --cells 10x5       RL² trained and scored on a cell of the paper's tables
"""


class Parser(argparse.ArgumentParser):
    """argparse with no abbreviated options and a "did you mean" on a typo.

    Every sub-command's parser is one of these too (argparse makes sub-parsers of the parent's
    class), so ``--stpes`` is refused everywhere, not read as ``--steps``, and an option that
    belongs to no command is reported with the usage of the command it was given to.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def options(self) -> list[str]:
        """Every option string this parser accepts (``--steps``, ``-h``, ...)."""
        return [s for action in self._actions for s in action.option_strings]

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Parse; an unknown option is reported by the (sub-)command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.command_parser(parsed).unrecognized(extras)
        return parsed

    def command_parser(self, parsed: argparse.Namespace) -> Parser:
        """The parser of the deepest sub-command ``parsed`` chose (``bench rl2``, say)."""
        parser: Parser = self
        for dest in ("command", "bench"):
            choice = getattr(parsed, dest, None)
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if choice is None or not subs or choice not in subs[0].choices:
                break
            parser = subs[0].choices[choice]
        return parser

    def unrecognized(self, extras: list[str]) -> NoReturn:
        """Exit 2 naming the unknown arguments, with the closest known option for each."""
        hints = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, self.options(), n=1, cutoff=0.6) \
                if flag.startswith("-") else []
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
        self.error("unrecognized arguments: " + " ".join(extras)
                   + ("".join(f"\n  {h}" for h in hints)))

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the usage and ``message``; an invalid choice gets the closest one."""
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2)) or \
                [c.strip() for c in found.group(2).split(",")]
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.5)
            if close:
                message += f"\n  did you mean {close[0]!r}?"
        super().error(message)


def _version() -> str:
    """``metarl X.Y.Z`` and the versions of what it runs on (read without importing them)."""
    import importlib.metadata as md
    import platform

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "absent"

    deps = " ".join(f"{name} {version(name)}" for name in
                    ("torch", "gymnasium", "mlflow", "optuna", "prefect", "dvc"))
    return f"metarl {version('metarl')} (Python {platform.python_version()}; {deps})"


def _parser() -> Parser:
    # names only: the bench commands must not need MLflow & co. (GPU machines, minimal installs)
    from pipelines.stages import STAGE_NAMES as STAGES

    parser = Parser(
        prog="metarl", description="Meta-RL workbench: task sets, tuning, meta-training, "
        "meta-test evaluation and model registration.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def project_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", default=".", help="project directory (default: .)")
        p.add_argument("--params", default=None,
                       help="params file (default: <root>/params.yaml)")

    stage = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)",
                           description="Run one stage. Order: " + " → ".join(STAGES))
    stage.add_argument("name", choices=list(STAGES), help="stage to run")
    project_args(stage)

    worker = sub.add_parser(
        "tune-worker", help="join the project's tuning study and run trials until it is complete",
        description="Run trials of the study that `metarl stage tune` would run (the same "
        "params, task sets and storage) until it holds tune.n_trials finished trials, then "
        "exit; write nothing else. Start any number, on any machine with a checkout of the "
        "project (its data/tasks pulled) and a database storage every machine reaches: "
        "METARL_TUNE_STORAGE=postgresql://user:password@host/db (and MLFLOW_TRACKING_URI for "
        "the trials' runs). Workers take turns creating trials under a PostgreSQL advisory "
        "lock, so no trial is lost or run twice; a killed worker's trial is failed by the "
        "others (heartbeat: after 120 s on another machine, at once on this one) and retried. "
        "The tune stage then writes the best parameters (README, \"Run it on a cluster\").")
    project_args(worker)

    def override_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--family", default=None, help="task.family for this run (e.g. nav2d)")
        p.add_argument("--algorithm", default=None, help="algo.name for this run (e.g. rl2)")
        p.add_argument("--iterations", type=int, default=None, metavar="N",
                       help="train.num_iterations for this run")
        p.add_argument("--trials", type=int, default=None, metavar="N",
                       help="tune.n_trials for this run (0 skips tuning)")
        p.add_argument("-S", "--set-param", dest="overrides", action="append", default=None,
                       metavar="KEY=VALUE", help="any params.yaml value, as `dvc exp run -S` "
                       "takes it (repeatable; +KEY=VALUE adds a key the file leaves out)")

    flow = sub.add_parser(
        "flow", help="run the whole pipeline as a Prefect flow, locally",
        description="Run tasks → tune → train → evaluate → register as a Prefect flow. In a "
        "DVC project each stage runs through `dvc repro --single-item`: up-to-date stages are "
        "skipped and dvc.lock is updated as `dvc repro` updates it (without dvc.yaml, every "
        "stage runs in-process). Overrides are checked first, then written into params.yaml "
        "as `dvc exp run -S` writes them; a bad one changes nothing. Without PREFECT_API_URL, "
        "Prefect starts a temporary local server for the run.")
    override_args(flow)
    project_args(flow)

    serve = sub.add_parser(
        "serve", help="schedule the flow on a Prefect server (cron or interval)",
        description="Serve the pipeline flow on a schedule: --cron (default \"0 3 * * *\") or "
        "--interval. Needs a real Prefect server: `prefect server start` (loopback) and "
        "PREFECT_API_URL=http://127.0.0.1:4200/api. Runs until interrupted. The overrides "
        "become the deployment's default parameters; a run started from the UI can change "
        "them.")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None,
                      help='cron schedule (default "0 3 * * *": 03:00 every day)')
    when.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                      help="run every SECONDS seconds instead")
    serve.add_argument("--name", default="metarl-nightly", help="deployment name")
    override_args(serve)
    project_args(serve)

    promote = sub.add_parser(
        "promote", help="point @champion at a registered version by hand (roll back)",
        description="Move the @champion alias of registered model NAME to VERSION, bypassing "
        "the gate: the way to roll back a promotion. The version must exist and its artifact "
        "must load. Uses the tracking URI of params.yaml (or MLFLOW_TRACKING_URI).")
    promote.add_argument("model_name", metavar="NAME", help="registered model name, e.g. "
                         "metarl-cartpole-maml")
    promote.add_argument("version", metavar="VERSION", type=int, help="version number")
    project_args(promote)

    adapt = sub.add_parser(
        "adapt", help="adapt a trained or registered model to tasks of yours",
        description="Adapt MODEL_URI to the tasks given exactly as the meta-test evaluator "
        "does (gradient steps for MAML-like learners, the trial's context for RL²), print the "
        "return before and after each step, and with --out write the adapted policy "
        "(weights.pt, config.json, adapted.pt: weights_only tensors) and curve.json. A task is "
        "a JSON object with the family's fields (see data/tasks/test.json for examples).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  metarl adapt models:/metarl-cartpole-maml@champion --steps 3 \\\n"
        "    --task '{\"pole_length\": 0.9, \"pole_mass\": 0.3, \"cart_mass\": 1.0, "
        "\"gravity\": 9.8, \"force_mag\": -10.0}' --out adapted   # reversed controls")
    adapt.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME@ALIAS, "
                       "models:/NAME/VERSION, runs:/..., a project's models/ folder, or a "
                       "folder this command wrote")
    adapt.add_argument("--task", default=None, help="one task (a JSON object) or a JSON list")
    adapt.add_argument("--task-file", type=Path, default=None,
                       help="a JSON file: a task, a list of tasks, or a task-set file")
    adapt.add_argument("--steps", type=int, default=3, help="adaptation steps (default 3)")
    adapt.add_argument("--episodes", type=int, default=20,
                       help="episodes per task per step (default 20)")
    adapt.add_argument("--seed", type=int, default=0, help="rollout seed (default 0)")
    adapt.add_argument("--out", type=Path, default=None, help="folder to write (replaced)")
    adapt.add_argument("--device", default="cpu", help="torch device (default cpu)")
    project_args(adapt)

    play = sub.add_parser(
        "play", help="roll a model out on a task of yours, print returns, film it",
        description="Play MODEL_URI (or, with --adapted DIR, the policy `metarl adapt --out "
        "DIR` adapted) on a task for N episodes and print each return; --video out.gif|out.mp4 "
        "renders the first episode (numpy drawings for cartpole, nav2d, pendulum, bandit and "
        "MDP; MuJoCo's renderer for the MuJoCo families where MUJOCO_GL=egl works).")
    play.add_argument("model_uri", metavar="MODEL_URI", nargs="?", default=None,
                      help="as for `metarl adapt` (not needed with --adapted)")
    play.add_argument("--task", default=None, help="one task (a JSON object); with --adapted: "
                      "the folder's first task unless given")
    play.add_argument("--task-file", type=Path, default=None, help="a JSON file of tasks "
                      "(the first is played)")
    play.add_argument("--adapted", type=Path, default=None,
                      help="a folder `metarl adapt --out` wrote: play its adapted policy")
    play.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    play.add_argument("--seed", type=int, default=0, help="rollout seed (default 0)")
    play.add_argument("--video", type=Path, default=None, help="write episode 0 as .gif/.mp4")
    play.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    project_args(play)

    defaults = sub.add_parser(
        "defaults", help="print the embedded defaults of params.yaml sections as YAML",
        description="Print the defaults a section of params.yaml takes when it is left out "
        "(params.yaml holds the default run's sections only: the chosen family's, MAML's), as "
        "YAML to paste into params.yaml and edit, e.g. `metarl defaults task.nav2d algo.rl2`.")
    defaults.add_argument("sections", nargs="+", metavar="SECTION",
                          help="dotted section or key: task.nav2d, algo.rl2, tune, ...")

    report = sub.add_parser(
        "report", help="write the comparison report: one offline HTML page and its PNGs",
        description="Write DIR/report.html (self-contained: no network needed to view it) and "
        "DIR/figures/*.png from what the stages wrote: adaptation curves with 95% bands, "
        "normalised scores (mean and IQM with intervals), the probability that the "
        "meta-learner beats each baseline, the gate's decision, task-set hashes, budgets and "
        "wall-clock. The same as the report stage (`metarl stage report`, what `dvc repro` runs "
        "after register), written anywhere and outside any pipeline run.")
    report.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder to write (default: <root>/reports)")
    project_args(report)

    bench = sub.add_parser("bench", help="benchmarks that print tables")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    sampler = bench_sub.add_parser(
        "sampler", help="env-steps/s: batched torch sampler vs gymnasium SyncVectorEnv",
        description="Env-steps/s of the batched sampler (env step + policy forward) against a "
        "gymnasium SyncVectorEnv loop running the same policy, side by side, one process.")
    sampler.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000],
                         help="numbers of parallel envs (default: 10 100 1000)")
    sampler.add_argument("--steps", type=int, default=200, help="steps per measurement")
    sampler.add_argument("--repeats", type=int, default=3, help="best of this many repeats")
    maml = bench_sub.add_parser(
        "maml", help="MAML on the MAML paper's 2D navigation: speed and returns",
        description="Meta-train MAML on 2D navigation (20 tasks x 20 trajectories x horizon "
        "100, one inner PG step, alpha 0.1, clipped outer step) and print seconds per "
        "meta-iteration, env-steps/s and the return before/after adaptation on held-out goals. "
        "With --reference DIR, the public pytorch-maml-rl trains after ours in the same "
        "command and a side-by-side table closes the output.")
    maml.add_argument("--iterations", type=int, default=100,
                      help="meta-iterations (default: 100)")
    maml.add_argument("--eval-every", type=int, default=10,
                      help="evaluate on the held-out goals every this many iterations")
    maml.add_argument("--seed", type=int, default=0, help="seed of goals, init and rollouts")
    maml.add_argument("--test-tasks", type=int, default=40, help="held-out goals (default: 40)")
    maml.add_argument("--meta-sgd", action="store_true",
                      help="Meta-SGD: learn a per-parameter inner step size, starting at alpha "
                      "0.1 (a separate configuration, not the fixed-alpha protocol)")
    maml.add_argument("--reference", type=Path, default=None, metavar="DIR",
                      help="a checkout of pytorch-maml-rl (github.com/tristandeleu/"
                      "pytorch-maml-rl): after ours, train it for the same iterations with its "
                      "own train.py and 2d-navigation.yaml, score its checkpoints with its "
                      "test.py, and print both side by side (about 7 s per iteration here)")
    maml.add_argument("--reference-python", default=None, metavar="PYTHON",
                      help="interpreter for the reference (default: this one); it needs torch, "
                      "gym==0.17.3, 'numpy<2', tqdm and pyyaml")
    maml.add_argument("--reference-workers", type=int, default=1, metavar="N",
                      help="the reference's sampler worker processes (default 1)")
    baselines = bench_sub.add_parser(
        "baselines", help="RL²'s Table 1 (bandits) and Table 2 (tabular MDPs) baselines",
        description="Reproduce the baseline columns of RL² (Duan et al. 2016) Tables 1 and 2 "
        "and print ours beside the paper's figures with 95% intervals; the last line gives "
        "the largest relative deviation. Tuned hyperparameters are chosen on separate tuning "
        "instances.")
    baselines.add_argument("--table", choices=["bandit", "mdp", "all"], default="all",
                           help="which table (default: all)")
    baselines.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                           help="subset: NxK for a bandit cell (pulls x arms, e.g. 10x5), N for "
                           "an MDP cell (episodes, e.g. 25); default: every cell of the table")
    baselines.add_argument("--instances", type=int, default=1000,
                           help="evaluation instances per cell (default 1000, as the paper)")
    baselines.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    baselines.add_argument("--device", default="cpu", help="torch device (default cpu)")
    nav2d = bench_sub.add_parser(
        "nav2d", help="MAML, Reptile and ES-MAML on 2D navigation, equal env-step budgets",
        description="Meta-train each gradient meta-learner on MAML's 2D navigation (or "
        "--protocol es_maml: ES-MAML's) for the same env-step budget per seed and print, per "
        "algorithm, the env steps and wall-clock used, the return before and after 1..K "
        "adaptation steps on held-out goals and the normalised score (random 0, "
        "straight-to-goal oracle 1) at the final checkpoint, with 95% intervals over goals x "
        "seeds, and env-steps/s. Choose settings with --split val (validation goals); the "
        "table's numbers are on the test goals.")
    nav2d.add_argument("--algorithms", nargs="+", default=None, metavar="NAME",
                       help="which (default: every registered one of the comparison)")
    nav2d.add_argument("--protocol", choices=["maml", "es_maml"], default="maml",
                       help="the navigation setting (default: maml)")
    nav2d.add_argument("--budget", type=int, default=8_000_000,
                       help="env steps per algorithm and seed (default 8,000,000: 100 of "
                       "MAML's meta-iterations)")
    nav2d.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                       help="training seeds (default: 0 1 2)")
    nav2d.add_argument("--steps", type=int, default=3, help="adaptation steps K (default 3)")
    nav2d.add_argument("--split", choices=["val", "test"], default="test",
                       help="goals to score on: val to choose settings, test for the table")
    nav2d.add_argument("--set", nargs="+", action="extend", default=None, metavar="ALGO.KEY=V",
                       dest="overrides", help="change a setting of one algorithm's "
                       "configuration, e.g. reptile.outer_lr=0.003 (YAML values)")
    nav2d.add_argument("--out", type=Path, default=None, metavar="FILE",
                       help="also write the table to FILE (atomically, once complete)")
    tune = bench_sub.add_parser(
        "tune", help="tuning trials/hour against PostgreSQL with 1, 2, ... workers",
        description="Run the tune stage's study on a fresh PostgreSQL database (a throwaway "
        "server on loopback from Debian's postgresql package, or --storage's server) once per "
        "worker count, with tune.n_workers processes of one torch thread each and a random "
        "search, and print the wall-clock, trials/hour, its ratio to one worker, the mean "
        "trial, the workers' utilisation and the count-and-create latency under the study's "
        "lock (README, \"Run it on a cluster\").")
    tune.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                      help="worker counts (default: 1 2)")
    tune.add_argument("--trials", type=int, default=8, help="trials per study (default 8)")
    tune.add_argument("--iterations", type=int, default=6,
                      help="meta-iterations per trial (default 6)")
    tune.add_argument("--family", default="cartpole", help="task.family (default cartpole)")
    tune.add_argument("--algorithm", default="maml", help="algo.name (default maml)")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="a PostgreSQL server to create the databases on, e.g. "
                      "postgresql://user:password@host/postgres (default: a throwaway one)")
    tune.add_argument("--out", type=Path, default=None, metavar="FILE",
                      help="also write the table to FILE (atomically, once complete)")
    offpolicy = bench_sub.add_parser(
        "offpolicy", help="PEARL and MQL against RL² and MAML: meta-test return against "
        "meta-training env steps",
        description="Meta-train each algorithm (default: PEARL, MQL, RL², MAML, whichever are "
        "registered) on one of PEARL's protocols for the same env-step budget per seed; score "
        "it on held-out tasks during training (a learning curve against env steps) and at the "
        "final checkpoint: the return (and, on the sparse point robot, the success rate) after "
        "0..N rounds of context, 95% intervals over tasks x seeds, the env steps and "
        "wall-clock used, and the env steps each needed to match the best on-policy "
        "algorithm's final return. Choose settings with --split val.")
    offpolicy.add_argument("--protocol", choices=["point_sparse", "point_dense", "cheetah_vel"],
                           default="point_sparse", help="the task (default: point_sparse)")
    offpolicy.add_argument("--algorithms", nargs="+", default=None, metavar="NAME",
                           help="which (default: pearl mql rl2 maml)")
    offpolicy.add_argument("--budget", type=int, default=None,
                           help="env steps per algorithm and seed (default: the protocol's)")
    offpolicy.add_argument("--budget-of", nargs="+", action="extend", default=None,
                           metavar="NAME=STEPS", dest="budgets",
                           help="a budget of its own for an algorithm, e.g. pearl=200000 mql="
                           "200000 (a tenth of the on-policy ones: does it match them with "
                           "that much less data?)")
    offpolicy.add_argument("--json", type=Path, default=None, metavar="FILE",
                           help="also write the rows (final returns, curves) to FILE as JSON, "
                           "what --combine reads")
    offpolicy.add_argument("--plot", type=Path, default=None, metavar="PNG",
                           help="also draw the learning curves (mean return after the last "
                           "round of context against meta-training env steps) as a PNG")
    offpolicy.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                           help="train nothing: one table (and --out, --curves, --json) from "
                           "runs made apart, e.g. one algorithm per job, each a --json file")
    offpolicy.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                           help="training seeds (default: 0 1 2)")
    offpolicy.add_argument("--episodes", type=int, default=3, dest="rounds",
                           help="rounds of context N at meta-test (default 3)")
    offpolicy.add_argument("--points", type=int, default=6,
                           help="evaluations along the learning curve (default 6)")
    offpolicy.add_argument("--split", choices=["val", "test"], default="test",
                           help="tasks to score on: val to choose settings, test for the table")
    offpolicy.add_argument("--set", nargs="+", action="extend", default=None,
                           metavar="ALGO.KEY=V", dest="overrides", help="change a setting of "
                           "one algorithm's configuration, e.g. pearl.kl_weight=1.0")
    offpolicy.add_argument("--out", type=Path, default=None, metavar="FILE",
                           help="also write the table to FILE (atomically, once complete)")
    offpolicy.add_argument("--curves", type=Path, default=None, metavar="FILE",
                           help="also write every evaluation point to FILE (CSV)")
    rl2 = bench_sub.add_parser(
        "rl2", help="RL² meta-trained on cells of RL²'s Tables 1 and 2, beside baselines",
        description="Meta-train RL² (GRU + PPO) per cell and seed, score it on the test "
        "instances of `bench baselines` (95% intervals), beside the paper's RL² figure and our "
        "Gittins/UCB1/TS (bandit) or PSRL (MDP) on the same instances, with wall-clock per cell.")
    rl2.add_argument("--table", choices=["bandit", "mdp", "all"], default="all",
                     help="which table (default: all)")
    rl2.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                     help="NxK bandit cells, N MDP cells (default: 10x5 10x10 10: two 1-minute "
                     "bandit cells and the 35-minute MDP n=10)")
    rl2.add_argument("--seeds", type=int, nargs="+", default=[0],
                     help="training seeds, one model each (default: 0)")
    rl2.add_argument("--mdp-seeds", type=int, nargs="+", default=None, metavar="SEED",
                     help="the MDP cells' training seeds, when they should differ from --seeds "
                     "(an MDP seed costs about 35 minutes on one CPU thread, one model playing "
                     "every MDP cell; a bandit seed 1 to 14; default: --seeds)")
    rl2.add_argument("--iterations", type=int, default=None,
                     help="PPO iterations per seed (default: the presets', bandit 400 / 600 "
                     "for n = 10 / 100, the 500-pull cells being played by the 100-pull model "
                     "(150 on their own trials); MDP 2000 for the 10-episode model that plays "
                     "every MDP cell (200 for a model trained on longer trials))")
    rl2.add_argument("--instances", type=int, default=1000,
                     help="test instances per cell (default 1000, as the paper)")
    rl2.add_argument("--instance-seed", type=int, default=0,
                     help="seed of the test instances (as bench baselines --seed; default 0)")
    rl2.add_argument("--device", default="cpu", help="torch device (default cpu)")
    rl2.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="stop training a seed early once this many seconds are spent (the "
                     "table notes the iterations run; default: no limit)")
    rl2.add_argument("--bandit", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                     help="RL² settings for the bandit cells in place of the presets' (keys of "
                     "RL2Config; repeatable; the presets: pipelines/bench/presets/"
                     "rl2_bandit.yaml), e.g. on a GPU --bandit meta_batch_size=1024 "
                     "hidden_size=256 num_minibatches=8 (the bench README's best GPU run); "
                     "inputs=paper head=linear: the paper's network on every cell (the presets' "
                     "trials over 10 pulls read reward-coded inputs with bilinear heads)")
    rl2.add_argument("--mdp", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                     help="likewise for the MDP cells (presets: pipelines/bench/presets/"
                     "rl2_mdp.yaml), e.g. --mdp hidden_size=256; inputs=paper head=linear: the "
                     "paper's network, in place of the presets' pair-coded inputs and bilinear "
                     "heads")
    rl2.add_argument("--bandit-train-pulls", type=int, default=None, metavar="N",
                     help="bandit cells with more pulls per trial than N train RL² on N-pull "
                     "trials (the N-pull cell's seeds, settings, iterations and --checkpoints "
                     "file: the same model) and are scored on their own trials; the policy sees "
                     "the fraction of the trial played, so it plays the longer trial on the same "
                     "schedule, stretched, and the 100-pull models beat training on 500 pulls. "
                     "0: every cell trains on its own length (default 100)")
    rl2.add_argument("--mdp-train-episodes", type=_lengths, default=None, metavar="N[,M...]",
                     help="MDP cells with more episodes per trial than N are played by the "
                     "model trained on N-episode trials (the N cell's seeds, settings, "
                     "iterations and --checkpoints file, trained once per run); the policy "
                     "reads the fraction of the trial's episodes played, so it plays the "
                     "longer trial on its own schedule, stretched. A list, e.g. 10,25: every "
                     "cell of at least 10 episodes is played by one model trained on 10- and "
                     "25-episode trials in turn, one iteration each. 0: every cell trains on "
                     "its own length (default 10, as benchmarks/rl2/params.yaml)")
    for table, unit in (("bandit", "pull"), ("mdp", "episode")):
        rl2.add_argument(f"--{table}-select-every", type=int, default=None, metavar="N",
                         help=f"every N training iterations (and at the last) score the "
                         f"{table.replace('mdp', 'MDP')} model on the tuning instances of the "
                         f"paper's cells it plays (200 each, the split `bench baselines` tunes "
                         f"its baselines on, apart from the test instances) and keep the "
                         f"weights with the best mean return per {unit}; default (or 0): "
                         "keep the last")
    rl2.add_argument("--workers", type=int, default=None, metavar="N",
                     help="train a cell's seeds N at a time, each in a process of its own with "
                     "one torch thread (the same models as one after another); 2 on a 2-core "
                     "machine trains three seeds in about two seeds' time (default 1, or the "
                     "params file's `workers`)")
    rl2.add_argument("--json-dir", type=Path, default=None, metavar="DIR",
                     help="also write each cell's numbers alone to DIR/bandit-10x5.json, "
                     "DIR/mdp-10.json, ... (what --combine reads; DVC runs cells that share "
                     "a model as one stage this way)")
    rl2.add_argument("--params", type=Path, default=None, metavar="FILE",
                     help="read all the options above from a YAML file instead (keys: table, "
                     "cells, seeds, mdp_seeds, iterations, instances, instance_seed, device, "
                     "time_budget, bandit, mdp; cells a list or {bandit: [...], mdp: [...]}), as "
                     "benchmarks/rl2/params.yaml does for `cd benchmarks/rl2 && dvc repro`; "
                     "--cells given too runs those cells with the file's other options")
    rl2.add_argument("--checkpoints", type=Path, default=None, metavar="DIR",
                     help="keep each cell's and seed's training state in DIR (e.g. "
                     "DIR/bandit-500x5-s0.pt) and resume from it when it is there: run a long "
                     "cell in pieces, e.g. with --time-budget, up to --iterations in all")
    rl2.add_argument("--json", type=Path, default=None, metavar="FILE",
                     help="also write the table's numbers to FILE as JSON (DVC metrics)")
    rl2.add_argument("--out", type=Path, default=None, metavar="FILE",
                     help="also write the printed table to FILE, once it is complete "
                     "(atomically: a failed or interrupted run leaves FILE as it was)")
    rl2.add_argument("--plot", type=Path, default=None, metavar="PNG",
                     help="also draw the cells as a PNG: ours with 95%% intervals, the paper's "
                     "RL² and our Gittins / PSRL, each cell scaled random 0 to oracle 1 (its "
                     "numbers go beside it as PNG-name.json unless --json says where)")
    rl2.add_argument("--combine", type=Path, default=None, metavar="DIR",
                     help="train nothing: print one table (and --json, --plot) from cells run "
                     "apart, DIR/bandit-10x5.json, DIR/mdp-10.json, ... (each a --json of "
                     "that one cell), in the order of --cells or --params; what "
                     "benchmarks/rl2/dvc.yaml's last stage does")
    rl2.add_argument("--replot", type=Path, default=None, metavar="JSON",
                     help="train nothing: draw --plot from a --json file of an earlier run "
                     "(e.g. benchmarks/rl2/results.json)")
    return parser


def _k_max(summary: dict[str, object]) -> int:
    main = summary[str(summary["learner"])]
    assert isinstance(main, dict)
    return sum(1 for k in main if k.startswith("return_post_adapt_k"))


def _replot_rl2(results: Path, png: Path | None) -> None:
    """Draw ``metarl bench rl2``'s JSON as a PNG."""
    from pipelines.plots import plot_rl2_cells

    if png is None:
        raise ValueError("--replot: give --plot PNG, the file to draw")
    try:
        data = json.loads(Path(results).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--replot {str(results)!r}: cannot read the JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise ValueError(f"--replot {str(results)!r}: not a `metarl bench rl2 --json` file "
                         "(no 'cells')")
    try:
        plot_rl2_cells(data, png, f"RL² per cell ({Path(results).name})")
    except ValueError as err:
        raise ValueError(f"--replot {str(results)!r}: {err}") from None
    print(f"wrote {png}", file=sys.stderr)  # stdout is the table (table.txt in DVC)


def _lengths(text: str) -> int | tuple[int, ...]:
    """``--mdp-train-episodes``: ``10`` or a list ``10,25``."""
    try:
        lengths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number of episodes or a comma-separated list, e.g. 10,25"
        ) from None
    return lengths[0] if len(lengths) == 1 else lengths


def _train_lengths(args: argparse.Namespace) -> tuple[int | None, int | tuple[int, ...] | None]:
    """``--bandit-train-pulls`` / ``--mdp-train-episodes`` as given, or their defaults.

    0 gives ``None``: every cell trains on its own trial length.
    """
    from pipelines.bench.rl2 import BANDIT_TRAIN_PULLS, MDP_TRAIN_EPISODES

    pulls, episodes = args.bandit_train_pulls, args.mdp_train_episodes
    return (BANDIT_TRAIN_PULLS if pulls is None else (pulls or None),
            MDP_TRAIN_EPISODES if episodes is None else (episodes or None))


def _bench_rl2(args: argparse.Namespace) -> None:
    """``metarl bench rl2``."""
    from pipelines.bench.rl2 import bench_rl2, combine, parse_overrides, read_params

    if args.replot is not None:
        _replot_rl2(args.replot, args.plot)
        return
    from pipelines.io import Tee, atomic_write_text

    json_path = args.json
    if args.plot is not None and json_path is None:
        json_path = args.plot.with_suffix(".json")
    table = Tee(sys.stdout) if args.out is not None else None
    if args.params is not None:
        p = read_params(args.params)
        cells = args.cells or p.cells  # --cells picks cells out of the file's
        if args.combine is not None:
            combine(cells, args.combine, table, json_path=json_path)
        else:
            bench_rl2(p.table, cells, p.seeds, p.instances, p.iterations,
                      p.instance_seed, p.device, table, json_path=json_path,
                      bandit_overrides=p.bandit, mdp_overrides=p.mdp,
                      time_budget=p.time_budget, checkpoints=args.checkpoints,
                      mdp_seeds=p.mdp_seeds, bandit_train_pulls=p.bandit_train_pulls,
                      mdp_train_episodes=p.mdp_train_episodes, json_dir=args.json_dir,
                      bandit_select_every=p.bandit_select_every,
                      mdp_select_every=p.mdp_select_every,
                      workers=p.workers if args.workers is None else args.workers)
    elif args.combine is not None:
        combine(args.cells, args.combine, table, json_path=json_path)
    else:
        train_pulls, train_episodes = _train_lengths(args)
        bench_rl2(args.table, args.cells, args.seeds, args.instances, args.iterations,
                  args.instance_seed, args.device, table, json_path=json_path,
                  bandit_overrides=parse_overrides(args.bandit, "--bandit"),
                  mdp_overrides=parse_overrides(args.mdp, "--mdp"),
                  time_budget=args.time_budget, checkpoints=args.checkpoints,
                  mdp_seeds=args.mdp_seeds, bandit_train_pulls=train_pulls,
                  mdp_train_episodes=train_episodes,
                  json_dir=args.json_dir, bandit_select_every=args.bandit_select_every or None,
                  mdp_select_every=args.mdp_select_every or None,
                  workers=1 if args.workers is None else args.workers)
    if table is not None:
        atomic_write_text(args.out, table.getvalue())
    if args.plot is not None:
        _replot_rl2(json_path, args.plot)


def _algo_overrides(items: list[str] | None) -> dict[str, dict[str, object]]:
    """``--set ALGO.KEY=VALUE ...`` as ``{algo: {key: value}}`` (YAML values, lists as tuples)."""
    import yaml

    overrides: dict[str, dict[str, object]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        algo, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise ValueError(f"--set {item!r}: expected ALGO.KEY=VALUE, e.g. "
                             "reptile.outer_lr=0.003")
        parsed = yaml.safe_load(value)
        overrides.setdefault(algo, {})[field] = tuple(parsed) if isinstance(parsed, list) \
            else parsed
    return overrides


def _bench_nav2d(args: argparse.Namespace) -> None:
    """``metarl bench nav2d``: parse ``--set ALGO.KEY=VALUE`` and run."""
    from pipelines.bench.nav2d import bench_nav2d
    from pipelines.io import atomic_write_text

    if args.budget < 1 or args.steps < 1:
        raise ValueError(f"--budget={args.budget}, --steps={args.steps}: each must be >= 1")
    result = bench_nav2d(args.algorithms, args.protocol, args.budget, tuple(args.seeds),
                         args.steps, args.split, _algo_overrides(args.overrides))
    if args.out is not None:
        atomic_write_text(args.out, result["table"] + "\n")


def _bench_offpolicy(args: argparse.Namespace) -> None:
    """``metarl bench offpolicy``."""
    from pipelines.io import atomic_write_text

    if args.combine is not None:
        from pipelines.bench.offpolicy import combine

        docs = []
        for path in args.combine:
            try:
                docs.append(json.loads(Path(path).read_text()))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"--combine {path}: not a `bench offpolicy --json` file "
                                 f"({err})") from None
        result = combine(docs)
    else:
        result = _run_offpolicy(args)
    if args.out is not None:
        atomic_write_text(args.out, result["table"] + "\n")
    if args.curves is not None:
        atomic_write_text(args.curves, result["curves"])
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result["json"]) + "\n")
    if args.plot is not None:
        from pipelines.bench.offpolicy import plot_curves

        plot_curves(result["rows"], result["json"], args.plot)


def _run_offpolicy(args: argparse.Namespace) -> dict[str, object]:
    """``metarl bench offpolicy`` without --combine: train and score."""
    from pipelines.bench.offpolicy import bench_offpolicy

    budgets = {}
    for item in args.budgets or []:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--budget-of {item!r}: give NAME=STEPS, e.g. pearl=200000")
        budgets[name.strip()] = int(value)
    return bench_offpolicy(args.algorithms, args.protocol, args.budget, tuple(args.seeds),
                           args.rounds, args.split, points=args.points,
                           overrides=_algo_overrides(args.overrides), budgets=budgets)


def _bench(args: argparse.Namespace) -> None:
    """``metarl bench <name>``."""
    if args.bench == "baselines":
        from pipelines.bench.baselines import bench_baselines

        bench_baselines(args.table, args.cells, args.instances, args.seed, args.device)
    elif args.bench == "rl2":
        _bench_rl2(args)
    elif args.bench == "nav2d":
        _bench_nav2d(args)
    elif args.bench == "tune":
        from pipelines.bench.tune import bench_tune
        from pipelines.io import atomic_write_text

        result = bench_tune(args.workers, args.trials, args.iterations, args.family,
                            args.algorithm, args.storage)
        if args.out is not None:
            atomic_write_text(args.out, result["table"] + "\n")
    elif args.bench == "offpolicy":
        _bench_offpolicy(args)
    elif args.bench == "maml":
        from pipelines.bench.maml import bench_maml

        for name in ("iterations", "eval_every", "test_tasks", "reference_workers"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: "
                                 "must be >= 1")
        bench_maml(args.iterations, args.eval_every, args.seed, args.test_tasks,
                   meta_sgd=args.meta_sgd, reference=args.reference,
                   reference_python=args.reference_python,
                   reference_workers=args.reference_workers)
    else:
        from pipelines.bench.sampler import bench_sampler

        bench_sampler(args.sizes, args.steps, args.repeats)


def _use(args: argparse.Namespace) -> None:
    """``metarl adapt`` / ``metarl play``, with the project's tracking store for a URI."""
    from pipelines.adapt import adapt_model, is_registry_uri

    if args.model_uri is not None and is_registry_uri(args.model_uri):
        from pipelines.runner import use_project_tracking

        use_project_tracking(args.root, args.params)
    if args.command == "adapt":
        adapt_model(args.model_uri, args.task, args.task_file, args.steps, args.episodes,
                    args.seed, args.out, args.device)
    else:
        from pipelines.play import play_model

        play_model(args.model_uri, args.task, args.task_file, args.adapted, args.episodes,
                   args.seed, args.video, args.fps)


def _project_command(args: argparse.Namespace) -> None:
    """``metarl promote`` and ``metarl tune-worker``: one call on the project, JSON out."""
    from pipelines.runner import promote_version, tune_worker

    if args.command == "promote":
        print(json.dumps(promote_version(args.model_name, args.version, args.root, args.params)))
    else:
        print(json.dumps({"tune-worker": tune_worker(args.root, args.params)}, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    from metarl.config import ConfigError

    errors: tuple[type[Exception], ...] = (ConfigError, ValueError, RuntimeError, OSError)
    if args.command not in ("bench", "defaults"):  # these run without MLflow installed
        from mlflow.exceptions import MlflowException

        errors += (MlflowException,)
    try:
        if args.command == "stage":
            from pipelines.runner import run_stage

            result = run_stage(args.name, args.root, args.params)
            if args.name == "evaluate":
                from pipelines.stages.evaluate import report

                ev = result
                print(report(ev, len(ev["seeds"]) and _k_max(ev), ev["test_task_hash"],
                             tuple(ev["seeds"])))
            else:
                print(json.dumps({"stage": args.name, "result": result}, default=str))
        elif args.command == "flow":
            from pipelines.flows import OVERRIDE_NAMES, run_flow

            print(json.dumps(run_flow(args.root, args.params,
                                      **{k: getattr(args, k) for k in OVERRIDE_NAMES}),
                             default=str))
        elif args.command in ("promote", "tune-worker"):
            _project_command(args)
        elif args.command == "serve":
            from pipelines.flows import DEFAULT_CRON, OVERRIDE_NAMES, serve

            serve(args.root, args.params, name=args.name, interval=args.interval,
                  cron=DEFAULT_CRON if args.cron is None and args.interval is None else args.cron,
                  **{k: getattr(args, k) for k in OVERRIDE_NAMES})
        elif args.command in ("adapt", "play"):
            _use(args)
        elif args.command == "report":
            from pipelines.stages.report import write_report

            print(write_report(args.root, args.params, args.out))
        elif args.command == "defaults":
            import yaml

            from pipelines.settings import section_defaults

            print(yaml.safe_dump(section_defaults(*args.sections), sort_keys=False), end="")
        elif args.command == "bench":
            _bench(args)
    except errors as err:
        from pipelines.settings import redact

        print(f"metarl: error: {redact(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
