"""Every key of a `ccpo_pl.fit` config, its type and range, checked in one pass before anything is written.

`SCHEMA` maps each dotted key (the union over `conf/`: every algorithm, env, trainer and experiment file) to a
`Rule`: a predicate and the text of what is allowed. `validate(cfg)` walks every leaf of the composed, resolved
config once: a key the table does not know is refused naming the nearest known key ("did you mean algo.kappa?"),
a value its rule rejects is refused naming the value and what is allowed, and then the checks that relate keys
(thresholds inside `eps.range`, devices this machine has, ...) run. `check_override_keys(argv)` applies the same
key check to the command line before Hydra composes it, so a mistyped key is one line whether or not it has `+`.

Why a table and not dataclass structured configs: the YAML files stay the one place with the values and their
sources (their comments), configs stored in old runs keep loading as plain data, and one flat table is a single
place to read every range; a structured config would restate every value and its nesting in Python, per algorithm.
Keys of another algorithm are known to the table (a ccpo run given `+algo.clip_epsilon` is not refused here; the
key is then unused).

Most of it is the table, one line per key.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ccpo_pl.algos.registry import ALGOS
from ccpo_pl.conf import CONF_DIR
from ccpo_pl.envs.tasks import TASKS
from ccpo_pl.errors import ConfigError

#: the loggers of conf/logger/ (`loggers.MAKERS` builds each)
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
#: config groups: `env=<file>` picks conf/env/<file>.yaml
GROUPS = ("env", "algo", "trainer", "logger", "experiment")


@dataclass(frozen=True)
class Rule:
    """`ok(value)` says whether a value is allowed; `allowed` says, in words, what is; `problem(key, value)`, where
    given, names what is wrong more exactly than `key=value` (e.g. the bad items of a list)."""

    ok: Callable[[Any], bool]
    allowed: str | Callable[[], str]
    problem: Callable[[str, Any], str | None] | None = None

    def allowed_text(self) -> str:
        return self.allowed() if callable(self.allowed) else self.allowed


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: the largest finite float32: every number of a run is used in float32 (networks, envs, thresholds)
FLOAT32_MAX = 3.4028234663852886e38
#: the most threshold bins `eps.bin` may cut `eps.range` into (the per-bin metrics and their logs)
MAX_EPS_BINS = 10_000
#: the most a count may be where no key says otherwise (an int32, what the libraries below index with)
COUNT_MAX = 2**31 - 1


def _num(v) -> bool:
    """A finite number, finite in float32 too."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= FLOAT32_MAX


def f32(v: float) -> float:
    """`v` rounded to float32 (`v` finite and within float32)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _positive(v) -> bool:
    """A finite number > 0 also once rounded to float32."""
    return _num(v) and f32(v) > 0


def integer(low: int, high: int | None = None, most: int = COUNT_MAX) -> Rule:
    """An integer in [low, high], or >= low and at most `most` (a sane bound on a count)."""
    if high is None:
        def too_large(key: str, v) -> str | None:
            return f"{key}={v} is too large (at most {most})" if _int(v) and v > most else None

        return Rule(lambda v: _int(v) and low <= v <= most, f"an integer >= {low}", too_large)
    return Rule(lambda v: _int(v) and low <= v <= high, f"an integer in [{low}, {high}]")


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A finite number in the interval given (open ends where asked)."""
    def ok(v) -> bool:
        return (_num(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        text = "a finite number"
    return Rule(ok, text)


def choice(*values) -> Rule:
    return Rule(lambda v: isinstance(v, type(values[0])) and v in values, f"one of {', '.join(map(str, values))}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null or {rule.allowed_text()}", rule.problem)


def text(what: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", what)


def number_list(low_open: float = 0.0, length: int | None = None) -> Rule:
    """A non-empty list of finite numbers > `low_open` (of `length` items where given)."""
    return Rule(lambda v: isinstance(v, list) and len(v) > 0 and (length is None or len(v) == length)
                and all(_num(x) and f32(x) > low_open for x in v),
                f"a list of {length or 'one or more'} finite numbers > {low_open:g}")


def pair(low_open: bool = False) -> Rule:
    """`[low, high]`, finite, low < high (and 0 < low where asked)."""
    return Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(_num(x) for x in v) and f32(v[0]) < f32(v[1])
                and (not low_open or f32(v[0]) > 0),
                f"[low, high] with {'0 < ' if low_open else ''}low < high, both finite")


def reserved(why: str) -> Rule:
    return Rule(lambda v: False, f"left unset: {why}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1)
WIDTHS = Rule(lambda v: isinstance(v, list) and len(v) > 0 and all(_int(x) and x > 0 for x in v),
              "a non-empty list of positive integers (layer widths)")
def _bad_thresholds(key: str, v) -> str | None:
    if isinstance(v, list) and not v:
        return f"{key} is empty"
    bad = [x for x in v if not _positive(x)] if isinstance(v, list) else []
    if bad:
        return f"{key} has {bad}"
    twice = sorted({x for x in v if v.count(x) > 1}) if isinstance(v, list) else []
    return f"{key} has {twice[0]} more than once (each threshold once)" if twice else None


THRESHOLDS = Rule(lambda v: isinstance(v, list) and len(v) > 0 and all(_positive(x) for x in v)
                  and len({f32(x) for x in v}) == len(v),
                  "a non-empty list of finite thresholds > 0 (each once, finite in float32), e.g. [20,40,60]",
                  _bad_thresholds)
NAME_MAX = 255  # bytes in one path component (ext4, xfs, tmpfs, ...)
RUN_NAME = Rule(lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and os.sep not in v
                and "\0" not in v and len(v.encode()) <= NAME_MAX,
                f"a plain directory name (no path separators, not '.' or '..', at most {NAME_MAX} bytes)")
DEVICES = Rule(lambda v: v == "auto" or (_int(v) and (v >= 1 or v == -1))
               or (isinstance(v, list) and len(v) > 0 and all(_int(x) and x >= 0 for x in v)
                   and len(set(v)) == len(v)),
               "a positive integer, 'auto', or on GPUs -1 (all) or a list of distinct device ids")
#: keys a config may leave out
OPTIONAL = ("env.kwargs",)  # the constructor arguments of env=custom
BY_FIT = "ccpo_pl.fit sets it (epochs from total_frames; its callbacks, logger, checkpoint IO and run directory)"


def _lagrange(prefix: str) -> dict[str, Rule]:
    return {f"{prefix}.method": choice("gradient", "pid"), f"{prefix}.lam_init": NON_NEGATIVE,
            f"{prefix}.lr": POSITIVE, f"{prefix}.lam_max": POSITIVE, f"{prefix}.pid.kp": NON_NEGATIVE,
            f"{prefix}.pid.ki": NON_NEGATIVE, f"{prefix}.pid.kd": NON_NEGATIVE}


def _names(names: Mapping[str, Any]) -> Rule:
    """One of the keys of `names` (a registry's table, read when checked: a test may register an entry)."""
    return Rule(lambda v: isinstance(v, str) and v in names, lambda: f"one of {', '.join(sorted(names))}",
                lambda key, v: f"unknown {key.split('.')[0]} {v!r}")


#: dotted key (`*` matches one level) -> rule. Sections follow conf/config.yaml, then the algorithm files.
SCHEMA: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "run_name": RUN_NAME,
    "label": text(),
    "log_dir": text("a directory (a non-empty string)"),
    "ckpt_path": optional(text("a checkpoint file")),
    "total_frames": integer(1, most=10**12),
    "threads": optional(integer(1, most=4096)),
    "check_sync": BOOL,
    "eps.behavior": THRESHOLDS,
    "eps.eval": THRESHOLDS,
    "eps.range": pair(low_open=True),
    "eps.bin": POSITIVE,
    "collect.num_envs": integer(1, most=4096),
    "collect.frames_per_collect": integer(1),
    "collect.collects_per_epoch": integer(1),
    "collect.updates_per_frame": NON_NEGATIVE,
    "collect.batch_size": integer(1),
    "collect.buffer_size": integer(1),
    "collect.parallel": BOOL,
    "eval.every_epochs": integer(1),
    "eval.episodes": integer(1, most=100_000),
    "eval.final_episodes": Rule(integer(0, most=100_000).ok, "an integer >= 0 (0: no final evaluation)",
                                integer(0, most=100_000).problem),
    "progress.every_s": POSITIVE,
    "eval.video": BOOL,
    "eval.video_eps": optional(POSITIVE),
    "eval.video_length": integer(1),
    "checkpoint.every_epochs": integer(1),
    "checkpoint.keep_buffers": integer(1),
    "faults.on_nan": choice("stop", "skip"),
    # conf/env/*.yaml
    "env.name": text("a short name (run names, reports)"),  # a TASKS key except for env=custom (_check_env)
    "env.suite": choice("bullet", "safety_gymnasium", "gymnasium"),
    "env.id": text("a gym id, or for env.suite=gymnasium 'module:Class'"),
    "env.kwargs": Rule(lambda v: isinstance(v, dict), "a mapping of keyword arguments, e.g. {step_size: 0.05}"),
    "env.max_episode_steps": integer(1),
    # conf/trainer/*.yaml: the Lightning Trainer arguments ccpo_pl passes on
    "trainer.accelerator": choice("cpu", "gpu", "cuda", "auto"),
    "trainer.devices": DEVICES,
    "trainer.num_nodes": integer(1, most=100_000),
    "trainer.strategy": choice("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false"),
    "trainer.precision": Rule(lambda v: str(v) in ("32-true", "32", "64-true", "64", "bf16-mixed", "16-mixed"),
                              "one of 32-true, 64-true, bf16-mixed, 16-mixed"),
    "trainer.enable_model_summary": BOOL,
    **{f"trainer.{k}": reserved(BY_FIT) for k in (
        "max_epochs", "min_epochs", "max_steps", "min_steps", "callbacks", "logger", "plugins", "default_root_dir",
        "num_sanity_val_steps", "log_every_n_steps", "enable_checkpointing")},
    # conf/logger/*.yaml (the union over loggers; each file lists its own)
    "logger.name": choice(*LOGGERS),
    "logger.project": text("a W&B project name"),
    "logger.entity": optional(text("a W&B team or user")),
    "logger.offline": BOOL,
    "logger.experiment": text("an MLflow experiment name"),
    "logger.tracking_uri": optional(text("an MLflow tracking URI")),
    # conf/experiment/*.yaml: helper keys the experiments interpolate
    "paper_budgets.*": integer(1),
    "behavior_sets.*": THRESHOLDS,
    "behavior_set": text("a key of behavior_sets"),
    # conf/algo/*.yaml (the union over algorithms)
    "algo.name": _names(ALGOS),
    "algo.hidden": WIDTHS,
    "algo.log_std": pair(),
    "algo.log_std_init": number(),
    "algo.extrapolation": choice("linear", "nearest"),
    "algo.gamma": number(0, 1, low_open=True, high_open=True),
    "algo.tau": number(0, 1, low_open=True),
    "algo.gae_lambda": FRACTION,
    "algo.lr_actor": POSITIVE,
    "algo.lr_critic": POSITIVE,
    "algo.lr_value": POSITIVE,
    "algo.compile": BOOL,
    "algo.single_threshold": BOOL,
    "algo.standardise_cost_adv": BOOL,
    "algo.critic_trunk": choice("shared", "separate"),
    # CCPO, its ablations and CVPO
    "algo.vve": BOOL,
    "algo.cvi": BOOL,
    "algo.z.kind": choice("poly", "mlp"),
    "algo.z.degree": integer(1),
    "algo.z.feature_dim": integer(1),
    "algo.n_eps": integer(1),
    "algo.versatile_start": FRACTION,
    "algo.versatile_frac": FRACTION,
    "algo.states_per_eps": optional(integer(1)),
    "algo.num_samples": integer(2),
    "algo.kappa": POSITIVE,
    "algo.action_penalty": NON_NEGATIVE,
    "algo.episode_cost_decay": number(0, 1),
    "algo.dual.eta_init": POSITIVE,
    "algo.dual.lam_init": NON_NEGATIVE,
    "algo.dual.iters": integer(1),
    "algo.dual.lam_max": POSITIVE,
    "algo.dual.gap_decay": number(0, 1, low_open=True),
    "algo.kl_mean_bound": POSITIVE,
    "algo.kl_cov_bound": POSITIVE,
    "algo.kl_lr": number_list(length=2),
    "algo.kl_max": number_list(length=2),
    "algo.estep_precision": choice("auto", "fp32", "bf16"),
    "algo.lagrange.alpha": NON_NEGATIVE,  # ccpo_wo_cvi: entropy weight of the Lagrangian actor loss
    "algo.threshold": optional(POSITIVE),
    # V-SAC-Lag, V-DDPG-Lag
    "algo.exploration_noise": NON_NEGATIVE,
    "algo.train_eps": choice("collected", "behavior"),
    "algo.alpha.init": POSITIVE,
    "algo.alpha.lr": POSITIVE,
    "algo.alpha.target_entropy": Rule(lambda v: v == "auto" or _num(v), "'auto' or a finite number"),
    "algo.alpha.learn": BOOL,
    # the Lagrange multipliers of every algorithm that has them (CCPO's w/o-CVI ablation, the Lagrangian baselines)
    **_lagrange("algo.lagrange"),
    # C-PPO-Lag, C-TRPO-Lag, CPO, PDO, TRPO, FPO
    "algo.value_epochs": integer(1),
    "algo.minibatch_size": integer(1),
    "algo.ppo_epochs": integer(1),
    "algo.clip_epsilon": number(0, 1, low_open=True, high_open=True),
    "algo.entropy_coeff": NON_NEGATIVE,
    "algo.max_grad_norm": POSITIVE,
    "algo.target_kl": POSITIVE,
    "algo.cg_iters": integer(1),
    "algo.cg_damping": NON_NEGATIVE,
    "algo.cg_residual_tol": POSITIVE,
    "algo.max_backtracks": integer(0),
    "algo.backtrack_coeff": number(0, 1, low_open=True, high_open=True),
    "algo.cost_shaping": BOOL,
    "algo.shaping.horizon": integer(1),
    "algo.shaping.hidden": WIDTHS,
    "algo.shaping.lr": POSITIVE,
    "algo.shaping.epochs": integer(1),
    "algo.shaping.minibatch_size": integer(1),
    "algo.penalty_nu": NON_NEGATIVE,
}
#: keys every run needs (the algorithm's own keys are required by its YAML file)
REQUIRED = tuple(k for k in SCHEMA if k.split(".")[0] not in ("algo", "paper_budgets", "behavior_sets",
                                                              "behavior_set", "trainer", "logger") and k not in OPTIONAL
                 ) + ("algo.name", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "logger.name")


#: keys of run configs stored by earlier versions (a run's config.yaml, a checkpoint's run_config) -> their names now
RENAMED_KEYS = {"algo.lagrangian": "algo.lagrange"}
#: keys of run configs stored by earlier versions whose setting was removed -> the value that behaves as the code
#: does now: a stored config with that value reads as one without the key; a run with another value evaluates (the
#: policy does not depend on it) but does not resume (`removed_setting`)
REMOVED_KEYS = {"algo.estep_states": "batch", "algo.critic_ensemble": 1}


_MISSING = object()


def _parent(tree: dict, key: str) -> tuple[dict | None, str]:
    """The mapping that holds the dotted `key` in `tree` (None where a level is missing) and the key's last part."""
    *path, leaf = key.split(".")
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return (tree if isinstance(tree, dict) else None), leaf


def current_run_config(stored: dict | None) -> dict | None:
    """A stored run config with every key of `RENAMED_KEYS` under its name now and every key of `REMOVED_KEYS` that
    holds its old default dropped (a copy; None stays None): a run started before a rename or a removal resumes
    (its config is compared with the new one) and its checkpoints load."""
    if stored is None:
        return None
    plain = copy.deepcopy(stored)
    for old, new in RENAMED_KEYS.items():
        (src, leaf), (dst, new_leaf) = _parent(plain, old), _parent(plain, new)
        if src is not None and leaf in src and dst is not None and new_leaf not in dst:
            dst[new_leaf] = src.pop(leaf)
    for old, default in REMOVED_KEYS.items():
        src, leaf = _parent(plain, old)
        if src is not None and src.get(leaf, _MISSING) == default:
            del src[leaf]
    return plain


def removed_setting(run: dict | None) -> str | None:
    """`key=value` of the first removed setting (`REMOVED_KEYS`) that a run config read by `current_run_config`
    still holds, i.e. one stored with a value other than the code's; None when there is none."""
    for key in REMOVED_KEYS:
        src, leaf = _parent(run or {}, key)
        if src is not None and leaf in src:
            return f"{key}={src[leaf]!r}"
    return None


def rule_for(key: str) -> Rule | None:
    """The rule of a dotted key, exact or through a `*` entry; None for an unknown key."""
    if key in SCHEMA:
        return SCHEMA[key]
    return next((r for pattern, r in SCHEMA.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)
                 and pattern.count(".") == key.count(".")), None)


def unknown_key(key: str) -> ConfigError:
    """The one-line refusal of a key no config file has, naming the nearest known key."""
    near = difflib.get_close_matches(key, [k for k in SCHEMA if "*" not in k], n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else "every key is listed, with its meaning, in the files of conf/"
    return ConfigError(f"unknown key {key}; {hint}")


def _leaves(node: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every value the table checks: a key the table names is a leaf even when its value
    is a list or a mapping; other mappings are walked into."""
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and rule_for(key) is None:
            yield from _leaves(v, f"{key}.")
        else:
            yield key, v


def _show(value) -> str:
    return repr(value).replace("\n", " ")


def algo_keys(name: str | None, inherited: bool = False) -> list[str]:
    """The dotted `algo.*` keys that `conf/algo/<name>.yaml` itself sets, with `inherited` also those of the files
    in its `defaults`; empty for a name without a file."""
    path = CONF_DIR / "algo" / f"{name}.yaml"
    if not name or not path.is_file():
        return []
    own = OmegaConf.to_container(OmegaConf.load(path))
    parents = [d for d in own.get("defaults", []) if isinstance(d, str) and d != "_self_"] if inherited else []
    keys = [key for key, _ in _leaves({k: v for k, v in own.items() if k != "defaults"}, "algo.")]
    return keys + [k for parent in parents for k in algo_keys(parent, inherited=True) if k not in keys]


def _chosen(overrides: list[str], group: str) -> str | None:
    """The file of `group` a command line picks, else conf/config.yaml's default."""
    for arg in overrides:
        key, sep, value = arg.lstrip("+").partition("=")
        if key == group and sep:
            return value
    defaults = OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", [])
    return next((d[group] for d in defaults if isinstance(d, Mapping) and group in d), None)


def _chosen_algos(overrides: list[str]) -> list[str]:
    """The algorithm files a command line picks (`algo=a` or a sweep `algo=a,b`), else conf/config.yaml's default."""
    for arg in overrides:
        key, sep, value = arg.lstrip("+").partition("=")
        if key == "algo" and sep:
            return [v.strip() for v in value.split(",")]
    defaults = OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", [])
    return [d["algo"] for d in defaults if isinstance(d, Mapping) and "algo" in d]


def _is_interpolation(cfg: DictConfig, key: str) -> bool:
    """Whether the config's `key` (dotted) is set by an interpolation rather than a value."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    try:
        return isinstance(node, DictConfig) and OmegaConf.is_interpolation(node, leaf)
    except Exception:  # noqa: BLE001 - a key that is not a plain node
        return False


def validate(cfg: DictConfig) -> None:
    """Check the composed config, every key against `SCHEMA`, then the keys against each other; raise a one-line
    `ConfigError` on the first problem (the value, and what is allowed)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001 - an interpolation to a missing key, a bad resolver, ...
        key = getattr(err, "full_key", None)
        raw = _raw_value(cfg, key) if key else None
        where = f"{key}={raw} " if key else ""
        raise ConfigError(f"the config does not resolve: {where}({str(err).splitlines()[0]}); give a value or an "
                          f"interpolation to another key, e.g. seed=1 or label=${{algo.name}}") from None
    plain.pop("hydra", None)
    # a value derived by interpolation is checked after the values it is derived from, so that a refusal names the
    # value the user gave (smoke's eps.eval comes from eps.range)
    derived = {key for key, _ in _leaves(plain) if _is_interpolation(cfg, key)}
    for key, value in sorted(_leaves(plain), key=lambda kv: kv[0] in derived):
        rule = rule_for(key)
        if rule is None:
            raise unknown_key(key)
        if not rule.ok(value):
            problem = (rule.problem and rule.problem(key, value)) or f"{key}={_show(value)} is not allowed"
            raise ConfigError(f"{problem}; {key} must be {rule.allowed_text()}")
    missing = [k for k in REQUIRED if OmegaConf.select(cfg, k, default="<missing>") == "<missing>"]
    if missing:
        raise ConfigError(f"{missing[0]} is missing from the config; restore it (conf/config.yaml has every key)")
    name = plain.get("algo", {}).get("name")
    missing = [k for k in algo_keys(name) if OmegaConf.select(cfg, k, default="<missing>") == "<missing>"]
    if missing:
        raise ConfigError(f"{missing[0]} is missing from the config; restore it (conf/algo/{name}.yaml has it)")
    _check_relations(plain)
    logger, name = plain["logger"], plain["logger"]["name"]
    extra = sorted(set(logger) - set(logger_keys(name)))
    if extra:
        raise ConfigError(f"logger.{extra[0]} is not a setting of logger={name} (conf/logger/{name}.yaml lists them)")
    missing = [k for k in logger_keys(name) if k not in logger]
    if missing:
        raise ConfigError(f"logger.{missing[0]} is missing from the config; restore it "
                          f"(conf/logger/{name}.yaml has it)")


def _raw_value(cfg: DictConfig, key: str):
    """The value of dotted `key` as written (an interpolation unresolved), or None."""
    node = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def logger_keys(name: str | None) -> list[str]:
    """The keys `conf/logger/<name>.yaml` sets (`name` among them); empty for a name without a file."""
    path = CONF_DIR / "logger" / f"{name}.yaml"
    return list(OmegaConf.load(path)) if name and path.is_file() else []


def _check_relations(c: dict) -> None:
    """The checks that relate keys; the types and ranges are already checked."""
    _check_env(c["env"])
    algo, eps = c["algo"], c["eps"]
    spec = ALGOS[algo["name"]]
    behavior, lo, hi = eps["behavior"], *eps["range"]
    if algo.get("single_threshold") and len(behavior) != 1:  # CPO family
        limits = [float(v) for v in behavior]
        raise ConfigError(f"algo={algo['name']} trains at one cost limit: eps.behavior={limits} must hold one "
                          f"value, e.g. eps.behavior=[25]")
    if spec.increasing_behavior and any(a >= b for a, b in zip(behavior, behavior[1:])):
        raise ConfigError(f"algo={algo['name']} combines one policy per behaviour threshold: eps.behavior="
                          f"{behavior} must be strictly increasing, e.g. {sorted(set(behavior))}")
    if (hi - lo) / eps["bin"] > MAX_EPS_BINS:
        raise ConfigError(f"eps.bin={eps['bin']} cuts eps.range={[lo, hi]} into {(hi - lo) / eps['bin']:.3g} bins; "
                          f"at most {MAX_EPS_BINS} are allowed: raise eps.bin")
    for key in ("behavior", "eval"):
        outside = [v for v in eps[key] if not lo <= v <= hi]
        if outside:
            raise ConfigError(f"eps.{key} has {outside} outside eps.range={[lo, hi]}; widen eps.range or drop them")
    if algo.get("threshold") is not None and not lo <= algo["threshold"] <= hi:
        raise ConfigError(f"algo.threshold={algo['threshold']} is outside eps.range={[lo, hi]}")
    if not spec.on_policy and updates_per_collect(c) < 1:
        raise ConfigError(f"collect.updates_per_frame={c['collect']['updates_per_frame']} gives no update per "
                          f"collection of {c['collect']['frames_per_collect']} frames; raise it")
    _check_devices(c["trainer"])


def _check_env(env: dict) -> None:
    """A suite's task name is a key of `TASKS`; only the gymnasium suite (env=custom) names its own and takes
    `env.kwargs`."""
    if env["suite"] == "gymnasium":
        return
    if env["name"] not in TASKS:
        raise ConfigError(f"unknown env {env['name']!r}; env.name must be one of {', '.join(sorted(TASKS))} "
                          f"(any name with env=custom)")
    if env.get("kwargs"):
        raise ConfigError(f"env.kwargs={env['kwargs']!r} is only for env.suite=gymnasium (env=custom); "
                          f"env.suite={env['suite']} takes none")


def _check_devices(trainer: dict) -> None:
    accel, devices = str(trainer["accelerator"]), trainer["devices"]
    gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    if not gpu and (devices == -1 or isinstance(devices, list)):
        raise ConfigError(f"trainer.devices={devices!r} is for GPUs; on trainer.accelerator={accel} give a number "
                          f"of processes, e.g. trainer.devices=2")
    have = torch.cuda.device_count() if gpu else os.cpu_count() or 1
    if gpu and have == 0:
        raise ConfigError(f"trainer.accelerator={accel} but this machine has no GPU; use trainer=cpu")
    what = "GPUs" if gpu else "CPU cores"
    if isinstance(devices, int) and devices > have:
        raise ConfigError(f"trainer.devices={devices} but this machine has {have} {what}; use at most {have}")
    if isinstance(devices, list) and max(devices) >= have:
        raise ConfigError(f"trainer.devices={devices} names a device this machine lacks; it has {have} {what} "
                          f"(ids 0 to {have - 1})")


def check_override_keys(overrides: list[str]) -> None:
    """The command line's `key=value` overrides (with or without `+`, and `~key`): each key must be one the table
    knows. Runs before Hydra composes the config (Hydra's own message for a missing key is several lines)."""
    for arg in overrides:
        key, sep, _ = arg.lstrip("+~").partition("=")
        key = key.split("@")[0]  # group@package
        hydra_own = key.replace("/", ".").split(".")[0] == "hydra"  # hydra.job..., hydra/launcher=submitit_slurm
        env_own = key.startswith("env.kwargs.")  # the keyword arguments of an env=custom env
        if arg.startswith("-") or not (sep or arg.startswith("~")) or key in GROUPS or hydra_own or env_own:
            continue  # flags (-m), config groups (checked against conf/), Hydra's own settings, an env's own
        if rule_for(key) is None and not any(k.startswith(f"{key}.") for k in SCHEMA):
            raise unknown_key(key)
        if key.startswith("algo.") and not arg.startswith("~"):
            _check_algo_key(key, _chosen_algos(overrides))
        if key.startswith("logger.") and not arg.startswith("~"):
            name = _chosen(overrides, "logger") or ""
            if not any(key.removeprefix("logger.") in logger_keys(n) for n in name.split(",")):  # a sweep: a,b
                raise ConfigError(f"{key} is not a setting of logger={name} (conf/logger/{name.split(',')[0]}.yaml "
                                  f"lists them)")


def _check_algo_key(key: str, algos: list[str]) -> None:
    """A one-line `ConfigError` when `key` (known to the table) is no setting of the chosen algorithms: another
    algorithm's key would be unused (with `+`) or refused by Hydra in several lines (without)."""
    own = {k for name in algos for k in algo_keys(name, inherited=True)}
    if not own or key in own or any(key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in own):
        return
    near = difflib.get_close_matches(key, sorted(own), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise ConfigError(f"{key} is not a setting of algo={','.join(algos)} (conf/algo/{algos[0]}.yaml lists them)"
                      f"{hint}")


def world_size(cfg: Mapping) -> int:
    """Ranks of the run: devices per node (a count, a list of ids, -1 or 'auto': every GPU; one process on CPU)
    times nodes."""
    trainer = cfg["trainer"]
    devices, accel = trainer["devices"], str(trainer["accelerator"])
    gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        n = len(devices)
    elif devices in ("auto", -1):
        n = max(1, torch.cuda.device_count()) if gpu else 1
    else:
        n = int(devices)
    return n * int(trainer.get("num_nodes", 1))


def updates_per_collect(cfg: Mapping) -> int:
    """Updates after each collection of an off-policy run."""
    collect = cfg["collect"]
    return int(round(collect["updates_per_frame"] * collect["frames_per_collect"]))
