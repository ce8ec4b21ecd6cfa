"""``hydra/launcher=population``: a multirun's jobs, grouped into populations trained in this process.

Jobs that batch together (:func:`optrepro.population.plan_groups`) are trained as one population of
at most ``hydra.launcher.max_members``; every other job runs as Hydra's basic launcher would run it,
after a one-line note saying why. Each job still returns its own JobReturn and outcome row, so the
sweep summary and everything downstream see ordinary jobs.
"""


import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
# (no "from __future__ import annotations": Hydra executes plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.optrepro_population.population_launcher.PopulationLauncher"
    #: the largest population; bigger groups are split (on a GPU, lower it if members do not fit)
    max_members: int = 16


ConfigStore.instance().store(group="hydra/launcher", name="population_schema", node=PopulationLauncherConf,
                             provider="optrepro")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 16) -> None:
        super().__init__()
        if int(max_members) < 1:
            raise ValueError(f"hydra.launcher.max_members must be >= 1, got {max_members}")
        self.max_members = int(max_members)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from optrepro.population import plan_groups, train_population
        from optrepro.sweep import outcome_row, record_outcome

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        jobs = [_job_config(c) for c in configs]
        populations, alone = plan_groups(jobs, self.max_members)
        _say(f"population launcher: {len(job_overrides)} jobs -> {len(populations)} population(s) "
             f"({', '.join(str(len(p)) for p in populations) or 'none'} members), {len(alone)} alone")
        returns: dict[int, JobReturn] = {}
        for group in populations:
            outcomes = train_population([jobs[i] for i in group], show_progress=bool(jobs[group[0]].progress))
            for i, outcome in zip(group, outcomes, strict=True):
                HydraConfig.instance().set_config(configs[i])
                record_outcome(sweep_dir, outcome_row(outcome, int(configs[i].hydra.job.num)))
                ret = JobReturn(overrides=list(job_overrides[i]), cfg=jobs[i], hydra_cfg=configs[i],
                                working_dir=str(Path.cwd()), task_name=str(configs[i].hydra.job.name),
                                status=JobStatus.COMPLETED)
                ret.return_value = outcome
                returns[i] = ret
        for i, reason in alone:
            _say(f"job {initial_job_idx + i} runs alone: {reason} "
                 f"({' '.join(filter_overrides(job_overrides[i]))})")
            returns[i] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                 config=configs[i], job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[i] for i in range(len(job_overrides))]


def _job_config(sweep_config: DictConfig) -> DictConfig:
    """The job's config as the task function receives it (the hydra node removed)."""
    cfg = OmegaConf.create(OmegaConf.to_container(sweep_config, resolve=False))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
