"""A workspace: a folder holding `tether.yaml`, the database (SQLite `tether.db` unless the config
names a PostgreSQL URL) and `runs/<stage>-<n>/` with each run's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether.config import WorkspaceConfig, load_config, save_config
from tether.data.store import Store, normalise_url
from tether.errors import TetherError

CONFIG_NAME = "tether.yaml"


@dataclass
class Workspace:
    root: Path
    config: WorkspaceConfig

    @property
    def database_url(self) -> str:
        """The configured URL; a relative SQLite path is taken relative to the workspace folder."""
        url = normalise_url(self.config.database)
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:" and not Path(url[len(prefix):]).is_absolute():
            return prefix + str((self.root / url[len(prefix):]).resolve())
        return url

    def store(self) -> Store:
        return Store(self.database_url)

    def new_run_dir(self, stage: str) -> Path:
        """`runs/<stage>-<n>` with the next free n."""
        runs = self.root / "runs"
        runs.mkdir(exist_ok=True)
        n = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in runs.glob(f"{stage}-*")
                     if p.name.rsplit("-", 1)[1].isdigit()), default=0)
        path = runs / f"{stage}-{n}"
        path.mkdir()
        return path

    def save(self) -> None:
        save_config(self.config, self.root / CONFIG_NAME)


def init_workspace(root: str | Path, database: str | None = None, policy: str | None = None) -> Workspace:
    """Make a workspace in `root` (created if needed) and create its database schema."""
    root = Path(root).resolve()
    if (root / CONFIG_NAME).exists():
        raise TetherError(f"{root / CONFIG_NAME} already exists: {root} is already a workspace")
    root.mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    cfg = WorkspaceConfig()
    if database:
        cfg.database = database
    if policy:
        cfg.policy = policy
    ws = Workspace(root, cfg)
    ws.store().close()  # create (migrate) the database now, so a bad URL fails here, not later
    ws.save()
    return ws


def open_workspace(root: str | Path = ".") -> Workspace:
    root = Path(root).resolve()
    return Workspace(root, load_config(root / CONFIG_NAME))
