"""Config helpers: the `${const:NAME}` resolver reads a constant from prepare.py (one place per fact)."""

from omegaconf import OmegaConf

import prepare


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("const"):
        OmegaConf.register_new_resolver("const", lambda name: getattr(prepare, name))
