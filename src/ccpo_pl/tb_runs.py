"""TensorBoard's layout of a run: one TensorBoard run per threshold, so that each threshold has its own colour and
legend entry.

TensorBoard colours a line by its run, not by its tag: thresholds written as tags of one run (`eval/eps_20/cost`,
`eval/eps_40/cost`) are drawn in one colour. `logger=tensorboard` therefore writes every per-threshold scalar into a
sub-run of the run's `tb/` folder, `tb/eps_<eps>/`, under the threshold-free tag below (as `SummaryWriter.
add_scalars` does); the run's other scalars stay in `tb/` itself. Every other logger (csv, wandb, mlflow) keeps the
flat tag. A chart then holds one line per threshold, named by its sub-run (`.../tb/eps_20`):

| flat tag (csv, wandb, mlflow, `ccpo_pl.fit`'s metrics) | TensorBoard run | TensorBoard tag |
|---|---|---|
| `eval/eps_<e>/{reward,cost}` | `tb/eps_<e>` | `by_eps/eval_{reward,cost}` |
| `train/eps_<e>/episode_{reward,cost}` | `tb/eps_<e>` | `by_eps/train_episode_{reward,cost}` |
| `eval/eps_<e>/cv` | `tb/eps_<e>` | `eval/cv` |
| `<group>/<name>/eps_<e>` (`multipliers/lam/eps_20`, ...) | `tb/eps_<e>` | `<group>/<name>` |
| any other (`eval/avg_reward`, `loss/critic`, ...) | `tb` | the same |

TensorBoard's Time Series sorts its sections by the tag's first segment, and the cards of a section by tag:
`by_eps` comes before every diagnostic group (`critic`, `estep`, `eval`, `loss`, `multipliers`, ...), and holds
only the reward and cost per threshold against frames, the evaluation's first: what a user sees first.
`read_scalars` maps the files back to the flat tags (and reads runs written before this layout, which kept the
flat tags in `tb/`).

Imports nothing heavy: `ccpo_pl.plot` and the benchmarks use it.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the first tag segment of the per-threshold reward, cost and CV: sorts before every diagnostic group
FIRST_SECTION = "by_eps"
#: the groups whose per-threshold tags have the threshold in the middle (`eval/eps_20/cost`)
MIDDLE_GROUPS = ("eval", "train")
#: the names of those tags that go to the first section (the others stay in their group: `eval/cv`)
FIRST_NAMES = ("reward", "cost", "episode_reward", "episode_cost")
_EPS = re.compile(r"eps_[-+]?[0-9.]+(e[-+]?[0-9]+)?")


def is_eps_run(name: str) -> bool:
    """Whether `name` is a per-threshold sub-run's name (`eps_20`, `eps_12.5`)."""
    return bool(_EPS.fullmatch(name))


def split_tag(tag: str) -> tuple[str | None, str]:
    """(sub-run, TensorBoard tag) of a flat tag; the sub-run is None for a tag of the run itself."""
    parts = tag.split("/")
    if len(parts) == 3 and parts[0] in MIDDLE_GROUPS and is_eps_run(parts[1]):
        if parts[2] in FIRST_NAMES:
            return parts[1], f"{FIRST_SECTION}/{parts[0]}_{parts[2]}"
        return parts[1], f"{parts[0]}/{parts[2]}"
    if len(parts) >= 3 and is_eps_run(parts[-1]):
        return parts[-1], "/".join(parts[:-1])
    return None, tag


def join_tag(run: str | None, tag: str) -> str:
    """The flat tag of `tag` in sub-run `run` (None: the run itself): `split_tag`'s inverse."""
    if run is None:
        return tag
    head, _, rest = tag.partition("/")
    if head == FIRST_SECTION:
        group, _, name = rest.partition("_")
        return f"{group}/{run}/{name}"
    if head in MIDDLE_GROUPS:
        return f"{head}/{run}/{rest}"
    return f"{tag}/{run}"


def read_scalars(tb_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Flat tag -> [(step, value), ...] in step order, from a run's `tb/` folder and its `eps_<eps>/` sub-runs
    (every event; a resumed run's repeated frames purged the way TensorBoard shows them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # heavy: only when read

    tb_dir = Path(tb_dir)
    runs = [(None, tb_dir)] + [(p.name, p) for p in sorted(tb_dir.glob("eps_*")) if p.is_dir() and is_eps_run(p.name)]
    out: dict[str, list[tuple[int, float]]] = {}
    for run, folder in runs:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(join_tag(run, tag), []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(events, key=lambda e: e[0]) for tag, events in out.items()}
