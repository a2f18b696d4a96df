"""The error the host side raises when the machine cannot do what a run asks."""

from ..config import ConfigError


class HostError(ConfigError):
    """The machine cannot do what the run asks (no /dev/kvm, not root, too little memory or disk, ...): one
    line naming what is missing and what would do, exit status 2 as for any bad input (a ConfigError)."""
