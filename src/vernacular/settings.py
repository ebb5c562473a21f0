"""Project settings. There is no need to edit this file unless you want to change values
from the Kedro defaults. For further information, including these default values, see
https://docs.kedro.org/en/stable/configure/configuration_basics/#configuration"""

# Instantiated project hooks.
# For example, after creating a hooks.py and defining a ProjectHooks class there, do
# from vernacular.hooks import ProjectHooks
# Hooks are executed in a Last-In-First-Out (LIFO) order.
# MLflow tracking (kedro-mlflow, the `mlflow` extra) only runs where the environment has an
# mlflow.yml (`kedro run --env mlflow`); without it this hook does nothing (docs/operations.md).
import warnings

from vernacular.hooks import mlflow_hook, run_guard_hook  # noqa: E402

# Kedro 1.7's OmegaConfigLoader registers its resolvers with OmegaConf.register_new_resolver, which
# omegaconf 2.4 deprecates: two UserWarnings on every command, from Kedro's code, not ours, and with
# nothing for a user to change. Only that message from that module is ignored.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning,
                        module=r"kedro\.config\.omegaconf_config")

# run_guard_hook: every vertical's parameters are validated, and its run lock taken, before the first node.
HOOKS = (run_guard_hook, mlflow_hook)

# Installed plugins for which to disable hook auto-registration.
# kedro-mlflow would otherwise track every run into ./mlruns once installed; the hook above
# wraps it instead. pluggy reports the distribution name with an underscore.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")

# Class that manages the KedroSession.
# from kedro.framework.session import KedroSession
# SESSION_CLASS = KedroSession

# Class that manages storing KedroSession data.
# from kedro.framework.session.store import BaseSessionStore
# SESSION_STORE_CLASS = BaseSessionStore
# Keyword arguments to pass to the `SESSION_STORE_CLASS` constructor.
# SESSION_STORE_ARGS = {
#     "path": "./sessions"
# }

# Directory that holds configuration.
# CONF_SOURCE = "conf"

# Class that manages how configuration is loaded.
# from kedro.config import OmegaConfigLoader

# CONFIG_LOADER_CLASS = OmegaConfigLoader

# Keyword arguments to pass to the `CONFIG_LOADER_CLASS` constructor.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local, conf/speechocean) overrides single keys of a vertical's block
    # instead of replacing the whole block.
    "merge_strategy": {"parameters": "soft"},
    # "config_patterns": {
    #     "spark" : ["spark*/"],
    #     "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
    # }
}

# Class that manages Kedro's library components.
# from kedro.framework.context import KedroContext
# CONTEXT_CLASS = KedroContext

# Class that manages the Data Catalog.
# from kedro.io import DataCatalog
# DATA_CATALOG_CLASS = DataCatalog
