"""Hydra launcher plugin ``hydra/launcher=mlip``: preflight every sweep point, then submit them all; and the
sweepers ``hydra/sweeper=mlip`` (the default: grids) and ``hydra/sweeper=optuna`` (an Optuna study).

A thin shim: the work is in :mod:`launcher.sweep` and :mod:`launcher.pipeline`. Imported by Hydra's
plugin discovery at start-up, so it must stay free of heavy imports.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from launcher.params import LauncherParams


@dataclass
class MlipLauncherConf(LauncherParams):
    _target_: str = "hydra_plugins.mlip_launch.launcher.MlipLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="mlip", node=MlipLauncherConf, provider="mlip-launch")


class MlipLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.study: Optional[Any] = None  # set by the Optuna sweeper while a study runs (launcher.submit.Earlier)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from launcher.sweep import launch_sweep

        return launch_sweep(self, job_overrides, initial_job_idx)  # the pipeline: launcher.pipeline


# ---- sweeper: Hydra's basic sweeper without its per-point validation pass ----
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf  # noqa: E402


@dataclass
class MlipSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mlip_launch.launcher.MlipSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="mlip", node=MlipSweeperConf, provider="mlip-launch")


class MlipSweeper(BasicSweeper):
    """Expands sweeps like Hydra's basic sweeper, but leaves validation to our launcher.

    The basic sweeper composes every point once only to validate it, and the launcher composes it
    again; ours composes each point once and checks all of them before any job starts.
    """

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None

    def sweep(self, arguments: List[str]) -> Any:
        """As the basic sweeper, except that ``SWEEP_DIR/multirun.yaml`` is written only once the sweep
        has written there (jobs ran or were submitted): a rejected or dry sweep leaves nothing on disk."""
        from pathlib import Path

        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                for r in results:
                    _ = r.return_value  # raises for a failed job, as the basic sweeper does
                initial_job_idx += len(batch)
                returns.append(results)
        finally:
            if sweep_dir.is_dir():
                OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return returns


# ---- sweeper: hydra/sweeper=optuna, stored over hydra-optuna-sweeper's own entry of that name ----
from hydra.plugins.search_path_plugin import SearchPathPlugin  # noqa: E402
from hydra.plugins.sweeper import Sweeper  # noqa: E402

try:  # hydra-optuna-sweeper's config module is light (no optuna import); its _impl is imported per study
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
except ImportError:  # pragma: no cover - a dependency, but keep `launch` usable without it
    OptunaSweeperConf = None

if OptunaSweeperConf is not None:
    @dataclass
    class MlipOptunaSweeperConf(OptunaSweeperConf):  # type: ignore[misc,valid-type]
        """The plugin's settings (n_trials, n_jobs trials per batch, sampler, storage, study_name, params);
        our sweeper runs them (``_optuna``)."""

        _target_: str = "hydra_plugins.mlip_launch.launcher.MlipOptunaSweeper"
        _recursive_: bool = False  # the sampler is instantiated (optuna imported) only once the space is checked
        max_failure_rate: float = 1.0  # a failed trial is told to Optuna as FAIL and the study goes on


def store_optuna_sweeper() -> None:
    """Store ours as ``hydra/sweeper=optuna``, over hydra-optuna-sweeper's entry of that name."""
    if OptunaSweeperConf is not None:
        ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=MlipOptunaSweeperConf,
                                     provider="mlip-launch")


store_optuna_sweeper()


class OptunaSweeperEntry(SearchPathPlugin):
    """Re-stores our ``optuna`` entry before each composition. Hydra's plugin scan executes every plugin
    module again, in the order of the ``hydra_plugins`` path entries, so the plugin's own entry could land
    after ours; search-path plugins run after that scan, before any config is loaded."""

    def manipulate_search_path(self, search_path: Any) -> None:
        store_optuna_sweeper()


class MlipOptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna``: an Optuna study whose trials run through our launchers (see ``_optuna``).

    optuna (with scipy) takes seconds to import, so the search space is checked first
    (:func:`launcher.study_space.search_space_problems`) and optuna, its sampler and the plugin's sweeper are only
    loaded for a sound space: a bad one is one line and exit 2 within a second.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs   # the sampler stays a config until then (_recursive_=False): instantiating it imports optuna
        self.sweeper: Any = None
        self._setup: Dict[str, Any] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._setup = dict(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        from launcher.core.errors import ConfigErrors
        from launcher.study_space import search_space_problems

        params = self.kwargs.get("params") or {}
        problems = search_space_problems([f"{k}={v}" for k, v in params.items()] + list(arguments),
                                         self.kwargs.get("search_space"))
        if problems:
            raise ConfigErrors(problems)
        from hydra.utils import instantiate

        from hydra_plugins.mlip_launch._optuna import MlipOptunaSweeperImpl

        kwargs = {**self.kwargs, "sampler": instantiate(self.kwargs["sampler"])}
        rate = kwargs.get("max_failure_rate")
        ok = isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0
        # the plugin asserts the rate at construction; ours refuses it in one line when the study starts
        self.sweeper = MlipOptunaSweeperImpl(**{**kwargs, "max_failure_rate": rate if ok else 1.0})
        self.sweeper.bad_failure_rate = None if ok else rate
        self.sweeper.setup(**self._setup)
        return self.sweeper.sweep(arguments)
