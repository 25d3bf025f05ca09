"""sidekick: announce Docker containers in etcd on a lease."""

__version__ = "0.1.0"
