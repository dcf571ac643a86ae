"""ccpo_pl."""

from ccpo_pl import compat

compat.install()
